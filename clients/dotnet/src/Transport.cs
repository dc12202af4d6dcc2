// Opening the instance's socket: a Unix domain socket on Linux and macOS, a named pipe on Windows.
using System;
using System.IO;
using System.IO.Pipes;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Threading;
using System.Threading.Tasks;

namespace Majordomo
{
    /// <summary>A Unix socket address. netstandard2.0 has no <c>UnixDomainSocketEndPoint</c>; this is
    /// the <c>sockaddr_un</c> layout that .NET (Core and Framework on Unix) and Mono accept.</summary>
    internal sealed class UnixEndPoint : EndPoint
    {
        public string Path { get; private set; }
        public UnixEndPoint(string path) { Path = path; }

        public override AddressFamily AddressFamily { get { return AddressFamily.Unix; } }

        public override SocketAddress Serialize()
        {
            var bytes = Encoding.UTF8.GetBytes(Path);
            var sa = new SocketAddress(AddressFamily.Unix, 2 + bytes.Length + 1);
            for (int i = 0; i < bytes.Length; i++) sa[2 + i] = bytes[i];
            sa[2 + bytes.Length] = 0;
            return sa;
        }

        public override EndPoint Create(SocketAddress sa)
        {
            var n = sa.Size - 2;
            var b = new byte[n];
            for (int i = 0; i < n; i++) b[i] = sa[2 + i];
            var len = Array.IndexOf(b, (byte)0);
            return new UnixEndPoint(Encoding.UTF8.GetString(b, 0, len < 0 ? n : len));
        }

        public override string ToString() { return Path; }
    }

    internal static class Transport
    {
        public const string PipePrefix = @"\\.\pipe\";

        /// <summary>Connects; <see cref="NotRunningException"/> when nothing listens (retryable).</summary>
        public static async Task<Stream> ConnectAsync(Place place, TimeSpan timeout, CancellationToken cancel)
        {
            var path = place.Socket;
            if (path.StartsWith(PipePrefix, StringComparison.Ordinal))
            {
                var pipe = new NamedPipeClientStream(".", path.Substring(PipePrefix.Length), PipeDirection.InOut, PipeOptions.Asynchronous);
                try
                {
                    // A short wait: a missing pipe is "not running", retried by the caller.
                    await pipe.ConnectAsync((int)Math.Min(timeout.TotalMilliseconds, 1000), cancel).ConfigureAwait(false);
                }
                catch (TimeoutException)
                {
                    pipe.Dispose();
                    throw new NotRunningException(place.Instance, path, "not found (no such pipe, or all its instances are busy)");
                }
                catch (UnauthorizedAccessException)
                {
                    pipe.Dispose();
                    throw new PermissionDeniedException(path);
                }
                catch (IOException e)
                {
                    pipe.Dispose();
                    throw new NotRunningException(place.Instance, path, "refused the connection (" + e.Message + ")");
                }
                return pipe;
            }
            if (!File.Exists(path) && !Directory.Exists(path))
                throw new NotRunningException(place.Instance, path, "not found");
            var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                await Task.Factory.FromAsync(s.BeginConnect, s.EndConnect, (EndPoint)new UnixEndPoint(path), null).ConfigureAwait(false);
            }
            catch (SocketException e)
            {
                s.Dispose();
                if (e.SocketErrorCode == SocketError.AccessDenied) throw new PermissionDeniedException(path);
                if (e.SocketErrorCode == SocketError.ConnectionRefused || e.SocketErrorCode == SocketError.AddressNotAvailable || e.SocketErrorCode == SocketError.TryAgain)
                    throw new NotRunningException(place.Instance, path, "refused the connection (" + e.SocketErrorCode + ": a socket file left by a stopped daemon?)");
                throw new MajordomoException("connection to " + path + " failed: " + e.Message, e);
            }
            catch (UnauthorizedAccessException)
            {
                s.Dispose();
                throw new PermissionDeniedException(path);
            }
            return new NetworkStream(s, true);
        }
    }
}
