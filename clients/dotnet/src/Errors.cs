using System;
using Majordomo.Json;

namespace Majordomo
{
    /// <summary>Base class of every error this library throws. Each says what went wrong and what to do.</summary>
    public class MajordomoException : Exception
    {
        public MajordomoException(string message) : base(message) { }
        public MajordomoException(string message, Exception inner) : base(message, inner) { }
    }

    /// <summary>No daemon listens on the instance's socket or pipe.</summary>
    public sealed class NotRunningException : MajordomoException
    {
        public string Instance { get; private set; }
        public string Socket { get; private set; }
        public string Reason { get; private set; }

        public NotRunningException(string instance, string socket, string reason)
            : base(Text(instance, socket, reason))
        {
            Instance = instance;
            Socket = socket;
            Reason = reason;
        }

        private static string Text(string instance, string socket, string reason)
        {
            var who = instance != null ? "no instance '" + instance + "' is running" : "no majordomo instance is running";
            var flag = instance != null && instance != "default" ? " --instance " + instance : "";
            return who + ": socket " + socket + " " + reason + "; start it with `majordomo run" + flag + "`";
        }
    }

    public sealed class PermissionDeniedException : MajordomoException
    {
        public PermissionDeniedException(string socket)
            : base("permission denied on " + socket + ": run as the daemon's user or an administrator, or list your user in [control] allowed_users") { }
    }

    /// <summary>The connection closed before the reply came.</summary>
    public sealed class ConnectionLostException : MajordomoException
    {
        public ConnectionLostException(string message = "the daemon closed the connection before replying") : base(message) { }
    }

    /// <summary>No reply within the call's timeout.</summary>
    public sealed class CallTimeoutException : MajordomoException
    {
        public string Command { get; private set; }
        public TimeSpan Timeout { get; private set; }

        public CallTimeoutException(string cmd, TimeSpan timeout)
            : base("no reply to '" + cmd + "' within " + timeout.TotalMilliseconds + " ms; the daemon may be overloaded or stuck (check `majordomo status`), or pass a longer timeout")
        {
            Command = cmd;
            Timeout = timeout;
        }
    }

    /// <summary>The daemon answered with an error; <see cref="Code"/> is machine-readable (<c>not_found</c>, <c>timeout</c>, ...).</summary>
    public sealed class RemoteException : MajordomoException
    {
        public string Code { get; private set; }
        public string RemoteMessage { get; private set; }
        public JsonNode Details { get; private set; }
        public string Command { get; private set; }

        public RemoteException(string code, string message, JsonNode details = null, string cmd = null)
            : base(message + " (" + code + ")" + (code == "forbidden" && message.Contains("token") ? "; set ClientOptions.Token or MAJORDOMO_TOKEN" : ""))
        {
            Code = code;
            RemoteMessage = message;
            Details = details;
            Command = cmd;
        }
    }
}
