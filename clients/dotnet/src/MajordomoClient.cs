using System;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.IO;
using System.Text;
using System.Threading;
using System.Threading.Tasks;
using Majordomo.Json;

namespace Majordomo
{
    /// <summary>Where and how to connect. Every member is optional.</summary>
    public sealed class ClientOptions
    {
        /// <summary>Instance name (default <c>MAJORDOMO_INSTANCE</c>, else <c>default</c>).</summary>
        public string Instance { get; set; }
        /// <summary>Everything under one folder, like <c>majordomo --home DIR</c> (default <c>MAJORDOMO_HOME</c>).</summary>
        public string Home { get; set; }
        /// <summary>System places (true) or per-user places (false); default: system for root on Unix.</summary>
        public bool? System { get; set; }
        /// <summary>A socket path or pipe name (<c>\\.\pipe\...</c>) overriding discovery (default <c>MAJORDOMO_SOCKET</c>).</summary>
        public string Socket { get; set; }
        /// <summary>The config file whose <c>[paths] socket</c> is read (default: the instance's).</summary>
        public string Config { get; set; }
        /// <summary>The instance's <c>[control] token</c> (default <c>MAJORDOMO_TOKEN</c>).</summary>
        public string Token { get; set; }
        /// <summary>Keep retrying this long while the daemon is starting.</summary>
        public TimeSpan Wait { get; set; }
        /// <summary>Default timeout of one call (30 s).</summary>
        public TimeSpan CallTimeout { get; set; }
        /// <summary>Reconnect with backoff when the connection drops (true).</summary>
        public bool Reconnect { get; set; }
        /// <summary>Longest pause between two reconnection attempts (5 s).</summary>
        public TimeSpan MaxBackoff { get; set; }
        public string ClientName { get; set; }

        public ClientOptions()
        {
            CallTimeout = TimeSpan.FromSeconds(30);
            Reconnect = true;
            MaxBackoff = TimeSpan.FromSeconds(5);
        }
    }

    /// <summary>
    /// A connection to a majordomo instance, carrying control commands and the bus. Every command
    /// of the contract is a typed method (<c>StatusAsync</c>, <c>PsAsync</c>, <c>QueueStatsAsync</c>, ...).
    /// When the daemon goes away the client reconnects with backoff, registers its endpoint again
    /// and restores its subscriptions; calls made meanwhile wait (within their timeout).
    /// </summary>
    public sealed partial class MajordomoClient : IDisposable
    {
        public const string Version = "0.1.0";
        private const int HighWater = 1 << 20;

        private readonly ClientOptions _o;
        public Place Place { get; private set; }
        /// <summary>The daemon's answer to this connection's <c>hello</c>.</summary>
        public Protocol.Hello HelloInfo { get; private set; }

        private Stream _stream;
        private int _gen;
        private volatile bool _connected;
        private volatile bool _closed;
        private TaskCompletionSource<bool> _connectedTcs = NewTcs<bool>();
        private long _nextId;
        private long _nextSid;
        private readonly ConcurrentDictionary<long, TaskCompletionSource<JsonNode>> _pending = new ConcurrentDictionary<long, TaskCompletionSource<JsonNode>>();
        private readonly ConcurrentDictionary<long, string> _pendingCmd = new ConcurrentDictionary<long, string>();
        private readonly ConcurrentDictionary<long, Subscription> _subs = new ConcurrentDictionary<long, Subscription>();
        private JsonNode _endpoint;
        private string _machineId;
        private readonly AsyncQueue<BusEvent> _events = new AsyncQueue<BusEvent>("event");
        private readonly AsyncQueue<Notice> _notices = new AsyncQueue<Notice>("notice");
        private int _compatErrors;
        private Notice _lastCompatError;

        private readonly object _wlock = new object();
        private MemoryStream _wbuf = new MemoryStream();
        private bool _flushing;
        private TaskCompletionSource<bool> _drained;

        private MajordomoClient(ClientOptions o, Place place)
        {
            _o = o;
            Place = place;
        }

        private static TaskCompletionSource<T> NewTcs<T>()
        {
            return new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        }

        public bool IsConnected { get { return _connected; } }

        /// <summary>Connects to the instance <paramref name="instance"/> (default <c>default</c>), found with the CLI's rules.</summary>
        public static Task<MajordomoClient> ConnectAsync(string instance = null, CancellationToken cancel = default(CancellationToken))
        {
            return ConnectAsync(new ClientOptions { Instance = instance }, cancel);
        }

        public static async Task<MajordomoClient> ConnectAsync(ClientOptions options, CancellationToken cancel = default(CancellationToken))
        {
            var o = options ?? new ClientOptions();
            if (o.Token == null)
            {
                var t = Environment.GetEnvironmentVariable("MAJORDOMO_TOKEN");
                if (!string.IsNullOrEmpty(t)) o.Token = t;
            }
            var client = new MajordomoClient(o, Discovery.Resolve(o));
            var sw = Stopwatch.StartNew();
            var delay = TimeSpan.FromMilliseconds(10);
            for (;;)
            {
                try
                {
                    await client.OpenAsync(cancel).ConfigureAwait(false);
                    return client;
                }
                catch (NotRunningException)
                {
                    if (sw.Elapsed + delay >= o.Wait) throw;
                }
                await Task.Delay(delay, cancel).ConfigureAwait(false);
                delay = TimeSpan.FromMilliseconds(Math.Min(delay.TotalMilliseconds * 2, 200));
            }
        }

        private async Task OpenAsync(CancellationToken cancel)
        {
            var stream = await Transport.ConnectAsync(Place, _o.CallTimeout, cancel).ConfigureAwait(false);
            int gen;
            lock (_wlock)
            {
                _stream = stream;
                gen = ++_gen;
                _wbuf = new MemoryStream();
                _flushing = false;
            }
            // The loop catches its own errors and ends with the stream; nobody awaits it.
            _ = Task.Run(() => ReadLoop(stream, gen));
            var limit = TimeSpan.FromMilliseconds(Math.Min(_o.CallTimeout.TotalMilliseconds, 10000));
            try
            {
                var hello = JsonNode.NewObject();
                hello["protocol"] = JsonNode.From(Protocol.Contract.Protocol);
                hello["client"] = JsonNode.From(_o.ClientName ?? "majordomo-dotnet/" + Version);
                if (_o.Token != null) hello["token"] = JsonNode.From(_o.Token);
                HelloInfo = Protocol.Hello.FromJson(await CallNowAsync("hello", hello, limit, cancel).ConfigureAwait(false));
                if (_endpoint != null) await CallNowAsync("bus.register", _endpoint, limit, cancel).ConfigureAwait(false);
                if (_machineId != null) await RegisterMachineNowAsync(_machineId, limit, cancel).ConfigureAwait(false);
                foreach (var sub in _subs.Values)
                {
                    var a = JsonNode.NewObject();
                    a["pattern"] = JsonNode.From(sub.Pattern);
                    a["sid"] = JsonNode.From(sub.Sid);
                    if (sub.Queue != null) a["queue"] = JsonNode.From(sub.Queue);
                    await CallNowAsync("bus.sub", a, limit, cancel).ConfigureAwait(false);
                }
            }
            catch
            {
                stream.Dispose();
                throw;
            }
            _connected = true;
            _connectedTcs.TrySetResult(true);
        }

        private async Task ReadLoop(Stream stream, int gen)
        {
            var buf = new byte[65536];
            int len = 0;
            try
            {
                for (;;)
                {
                    if (len == buf.Length) Array.Resize(ref buf, buf.Length * 2);
                    int n = await stream.ReadAsync(buf, len, buf.Length - len).ConfigureAwait(false);
                    if (n <= 0) break;
                    int start = 0, scan = len;
                    len += n;
                    for (;;)
                    {
                        int nl = Array.IndexOf(buf, (byte)'\n', scan, len - scan);
                        if (nl < 0) break;
                        if (nl > start) Dispatch(Encoding.UTF8.GetString(buf, start, nl - start));
                        start = scan = nl + 1;
                    }
                    if (start > 0)
                    {
                        Buffer.BlockCopy(buf, start, buf, 0, len - start);
                        len -= start;
                    }
                }
            }
            catch (Exception)
            {
                // closed or broken: handled below
            }
            finally
            {
                OnDisconnect(gen);
            }
        }

        private void OnDisconnect(int gen)
        {
            lock (_wlock)
            {
                if (gen != _gen) return;
            }
            var was = _connected;
            _connected = false;
            if (_connectedTcs.Task.IsCompleted) _connectedTcs = NewTcs<bool>();
            FailPending(new ConnectionLostException());
            if (_closed) return;
            if (was) _notices.Push(new Notice { Kind = "disconnected", Message = "lost the connection to " + Place.Socket });
            if (was && _o.Reconnect) Task.Run(ReconnectLoop);
            else if (!_o.Reconnect)
            {
                foreach (var s in _subs.Values) s.Close();
                _events.Close();
            }
        }

        private async Task ReconnectLoop()
        {
            var delay = TimeSpan.FromMilliseconds(50);
            while (!_closed)
            {
                await Task.Delay(delay).ConfigureAwait(false);
                try
                {
                    await OpenAsync(CancellationToken.None).ConfigureAwait(false);
                    _notices.Push(new Notice { Kind = "reconnected", Message = "reconnected to " + Place.Socket });
                    return;
                }
                catch (Exception)
                {
                    delay = TimeSpan.FromMilliseconds(Math.Min(delay.TotalMilliseconds * 2, _o.MaxBackoff.TotalMilliseconds));
                }
            }
        }

        private void FailPending(Exception e)
        {
            foreach (var kv in _pending)
            {
                TaskCompletionSource<JsonNode> t;
                if (_pending.TryRemove(kv.Key, out t)) t.TrySetException(e);
            }
        }

        /// <summary>Closes the connection; subscriptions and event streams end.</summary>
        public void Dispose()
        {
            _closed = true;
            _connected = false;
            Stream s;
            lock (_wlock) { s = _stream; _gen++; }
            FailPending(new ConnectionLostException("the client was closed"));
            foreach (var sub in _subs.Values) sub.Close();
            _subs.Clear();
            _events.Close();
            _notices.Close();
            if (s != null) s.Dispose();
        }

        private void Dispatch(string line)
        {
            JsonNode o;
            try { o = JsonNode.Parse(line); }
            catch (FormatException) { return; }
            if (o.Kind != JsonKind.Object) return;
            var msg = o["msg"];
            if (msg != null && msg.Kind == JsonKind.Object)
            {
                Subscription sub;
                if (_subs.TryGetValue(JsonConv.ToLong(msg["sid"]), out sub))
                    sub.Push(new BusMessage { Client = this, Sid = sub.Sid, Topic = JsonConv.ToStr(msg["topic"]), Data = msg["data"] ?? JsonNode.Null, ReplyTo = JsonConv.ToStr(msg["reply_to"]) });
                return;
            }
            var ev = o["event"];
            if (ev != null && ev.Kind == JsonKind.Object)
            {
                _events.Push(new BusEvent { Name = JsonConv.ToStr(ev["name"]), From = JsonConv.ToStr(ev["from"]), Data = ev["data"] ?? JsonNode.Null, Timestamp = JsonConv.ToStr(ev["ts"]) });
                return;
            }
            var notice = o["notice"];
            if (notice != null && notice.Kind == JsonKind.Object)
            {
                _notices.Push(new Notice { Kind = JsonConv.ToStr(notice["kind"]), Message = JsonConv.ToStr(notice["message"]), Count = JsonConv.ToLong(notice["count"]), Raw = notice });
                return;
            }
            var type = JsonConv.ToStr(o["Type"]);
            if (type != null && o.Has("Payload"))
            {
                var p = o["Payload"];
                if (type == "SendEvent")
                {
                    _events.Push(new BusEvent
                    {
                        Name = JsonConv.ToStr(p["EventName"]),
                        From = JsonConv.ToStr(p["SourceMachineId"]),
                        Target = JsonConv.ToStr(p["TargetMachineId"]),
                        Data = p["Payload"] ?? JsonNode.Null,
                        Timestamp = JsonConv.ToStr(p["Timestamp"]),
                    });
                }
                else
                {
                    var n = new Notice { Kind = "error", Message = JsonConv.ToStr(p["Message"]), Raw = o };
                    _lastCompatError = n;
                    Interlocked.Increment(ref _compatErrors);
                    _notices.Push(n);
                }
                return;
            }
            if (o.Has("ok") || o.Has("error"))
            {
                var idNode = o["id"];
                TaskCompletionSource<JsonNode> tcs = null;
                long id = 0;
                if (idNode != null && idNode.Kind == JsonKind.Number)
                {
                    id = idNode.AsLong;
                    _pending.TryRemove(id, out tcs);
                }
                var err = o["error"];
                if (tcs == null)
                {
                    if (err != null) _notices.Push(new Notice { Kind = "error", Message = JsonConv.ToStr(err["message"]) + " (" + JsonConv.ToStr(err["code"]) + ")", Raw = o });
                    return;
                }
                string cmd;
                _pendingCmd.TryRemove(id, out cmd);
                if (err != null) tcs.TrySetException(new RemoteException(JsonConv.ToStr(err["code"]) ?? "other", JsonConv.ToStr(err["message"]) ?? "", err["details"], cmd));
                else tcs.TrySetResult(o["ok"]);
            }
        }

        // -- writing --------------------------------------------------------------------------

        private Task EnqueueAsync(byte[] data)
        {
            Task wait = null;
            bool start = false;
            lock (_wlock)
            {
                if (_stream == null || _closed) throw new ConnectionLostException("not connected to " + Place.Socket);
                _wbuf.Write(data, 0, data.Length);
                if (!_flushing)
                {
                    _flushing = true;
                    start = true;
                }
                if (_wbuf.Length > HighWater)
                {
                    if (_drained == null) _drained = NewTcs<bool>();
                    wait = _drained.Task;
                }
            }
            if (start) Task.Run(FlushLoop);
            return wait ?? Task.FromResult(true);
        }

        private async Task FlushLoop()
        {
            for (;;)
            {
                byte[] chunk;
                Stream s;
                TaskCompletionSource<bool> drained;
                lock (_wlock)
                {
                    drained = _drained;
                    _drained = null;
                    if (_wbuf.Length == 0)
                    {
                        _flushing = false;
                        if (drained != null) drained.TrySetResult(true);
                        return;
                    }
                    chunk = _wbuf.ToArray();
                    _wbuf.SetLength(0);
                    s = _stream;
                }
                if (drained != null) drained.TrySetResult(true);
                try
                {
                    await s.WriteAsync(chunk, 0, chunk.Length).ConfigureAwait(false);
                    await s.FlushAsync().ConfigureAwait(false);
                }
                catch (Exception)
                {
                    lock (_wlock)
                    {
                        _wbuf.SetLength(0);
                        _flushing = false;
                        if (_drained != null) { _drained.TrySetResult(true); _drained = null; }
                    }
                    try { s.Dispose(); } catch (Exception) { }
                    return;
                }
            }
        }

        private static byte[] Line(StringBuilder sb)
        {
            sb.Append('\n');
            return Encoding.UTF8.GetBytes(sb.ToString());
        }

        // -- calling --------------------------------------------------------------------------

        private async Task<JsonNode> CallNowAsync(string cmd, JsonNode args, TimeSpan timeout, CancellationToken cancel, TimeSpan? shown = null)
        {
            var id = Interlocked.Increment(ref _nextId);
            var sb = new StringBuilder();
            sb.Append("{\"id\":").Append(id).Append(",\"cmd\":");
            JsonNode.WriteString(sb, cmd);
            if (args != null && args.Kind == JsonKind.Object)
            {
                foreach (var k in args.Keys)
                {
                    if (k == "id" || k == "cmd") continue;
                    sb.Append(',');
                    JsonNode.WriteString(sb, k);
                    sb.Append(':');
                    args[k].Write(sb);
                }
            }
            sb.Append('}');
            var tcs = NewTcs<JsonNode>();
            _pending[id] = tcs;
            _pendingCmd[id] = cmd;
            using (var cts = CancellationTokenSource.CreateLinkedTokenSource(cancel))
            {
                try
                {
                    await EnqueueAsync(Line(sb)).ConfigureAwait(false);
                    var delay = Task.Delay(timeout, cts.Token);
                    var done = await Task.WhenAny(tcs.Task, delay).ConfigureAwait(false);
                    if (done != tcs.Task)
                    {
                        cancel.ThrowIfCancellationRequested();
                        throw new CallTimeoutException(cmd, shown ?? timeout);
                    }
                    return await tcs.Task.ConfigureAwait(false);
                }
                finally
                {
                    cts.Cancel();
                    TaskCompletionSource<JsonNode> t;
                    _pending.TryRemove(id, out t);
                    string c;
                    _pendingCmd.TryRemove(id, out c);
                }
            }
        }

        private async Task WaitConnectedAsync(string what, TimeSpan timeout, CancellationToken cancel)
        {
            if (_connected) return;
            if (_closed) throw new ConnectionLostException("the client is closed");
            if (!_o.Reconnect) throw new ConnectionLostException("not connected to " + Place.Socket + " (Reconnect is off)");
            var t = _connectedTcs.Task;
            var done = await Task.WhenAny(t, Task.Delay(timeout, cancel)).ConfigureAwait(false);
            cancel.ThrowIfCancellationRequested();
            if (done != t) throw new NotRunningException(Place.Instance, Place.Socket, "did not come back within " + timeout.TotalMilliseconds + " ms (" + what + ")");
        }

        /// <summary>Sends any command with its arguments (a JSON object, or null) and returns the reply's <c>ok</c> value; <see cref="RemoteException"/> on an error reply.</summary>
        public Task<JsonNode> CallAsync(string cmd, JsonNode args, CancellationToken cancel = default(CancellationToken))
        {
            return CallAsync(cmd, args, null, cancel);
        }

        public async Task<JsonNode> CallAsync(string cmd, JsonNode args, TimeSpan? timeout, CancellationToken cancel = default(CancellationToken))
        {
            var t = timeout ?? _o.CallTimeout;
            var sw = Stopwatch.StartNew();
            await WaitConnectedAsync(cmd, t, cancel).ConfigureAwait(false);
            var left = t - sw.Elapsed;
            return await CallNowAsync(cmd, args, left > TimeSpan.Zero ? left : TimeSpan.FromMilliseconds(1), cancel, t).ConfigureAwait(false);
        }

        // -- the bus --------------------------------------------------------------------------

        /// <summary>Registers this connection as <paramref name="endpoint"/>; events sent to it arrive on <see cref="Events"/>. Restored after a reconnect.</summary>
        public async Task RegisterAsync(string endpoint, bool takeover = false, string token = null, CancellationToken cancel = default(CancellationToken))
        {
            var a = JsonNode.NewObject();
            a["endpoint"] = JsonNode.From(endpoint);
            if (takeover) a["takeover"] = JsonNode.True;
            if (token != null) a["token"] = JsonNode.From(token);
            await CallAsync("bus.register", a, cancel).ConfigureAwait(false);
            _endpoint = a;
        }

        public async Task UnregisterAsync(CancellationToken cancel = default(CancellationToken))
        {
            _endpoint = null;
            _machineId = null;
            await CallAsync("bus.unregister", JsonNode.NewObject(), cancel).ConfigureAwait(false);
        }

        /// <summary>Sends an event to an endpoint; <see cref="RemoteException"/> <c>not_found</c> if it is not registered
        /// (with <paramref name="wait"/>, waits that long for it to register).</summary>
        public async Task SendAsync(string to, string eventName, object data = null, TimeSpan? wait = null, CancellationToken cancel = default(CancellationToken))
        {
            var a = JsonNode.NewObject();
            a["to"] = JsonNode.From(to);
            a["event"] = JsonNode.From(eventName);
            a["data"] = JsonNode.FromObject(data);
            TimeSpan? timeout = null;
            if (wait.HasValue)
            {
                a["wait_ms"] = JsonNode.From((long)wait.Value.TotalMilliseconds);
                timeout = _o.CallTimeout + wait.Value;
            }
            await CallAsync("bus.send", a, timeout, cancel).ConfigureAwait(false);
        }

        /// <summary>Publishes without an acknowledgement (errors arrive on <see cref="Notices"/>). Completes once queued for writing.</summary>
        public async Task PublishAsync(string topic, object data = null)
        {
            if (!_connected) await WaitConnectedAsync("bus.pub", _o.CallTimeout, CancellationToken.None).ConfigureAwait(false);
            var sb = new StringBuilder(64);
            sb.Append("{\"cmd\":\"bus.pub\",\"topic\":");
            JsonNode.WriteString(sb, topic);
            sb.Append(",\"data\":");
            JsonNode.FromObject(data).Write(sb);
            sb.Append('}');
            await EnqueueAsync(Line(sb)).ConfigureAwait(false);
        }

        /// <summary>Publishes and returns how many subscribers got it.</summary>
        public async Task<long> PublishAckedAsync(string topic, object data = null, CancellationToken cancel = default(CancellationToken))
        {
            var a = JsonNode.NewObject();
            a["topic"] = JsonNode.From(topic);
            a["data"] = JsonNode.FromObject(data);
            var r = await CallAsync("bus.pub", a, cancel).ConfigureAwait(false);
            var d = r["delivered"];
            return d == null ? 0 : d.Kind == JsonKind.Bool ? (d.AsBool ? 1 : 0) : d.AsLong;
        }

        /// <summary>Subscribes to a pattern (<c>*</c> one token, a final <c>&gt;</c> the rest); with <paramref name="queue"/>, joins that queue group.</summary>
        public async Task<Subscription> SubscribeAsync(string pattern, string queue = null, CancellationToken cancel = default(CancellationToken))
        {
            var sid = Interlocked.Increment(ref _nextSid);
            var sub = new Subscription(this, sid, pattern, queue);
            _subs[sid] = sub;
            var a = JsonNode.NewObject();
            a["pattern"] = JsonNode.From(pattern);
            a["sid"] = JsonNode.From(sid);
            if (queue != null) a["queue"] = JsonNode.From(queue);
            try
            {
                await CallAsync("bus.sub", a, cancel).ConfigureAwait(false);
            }
            catch
            {
                Subscription s;
                _subs.TryRemove(sid, out s);
                throw;
            }
            return sub;
        }

        public async Task UnsubscribeAsync(Subscription sub)
        {
            Subscription s;
            _subs.TryRemove(sub.Sid, out s);
            sub.Close();
            if (!_connected) return;
            var a = JsonNode.NewObject();
            a["sid"] = JsonNode.From(sub.Sid);
            try { await CallAsync("bus.unsub", a).ConfigureAwait(false); }
            catch (RemoteException) { }
            catch (ConnectionLostException) { }
        }

        /// <summary>Sends a request to one subscriber of <paramref name="topic"/> and returns its reply;
        /// <see cref="RemoteException"/> with code <c>no_responders</c> or <c>timeout</c>.</summary>
        public async Task<JsonNode> RequestAsync(string topic, object data = null, TimeSpan? timeout = null, CancellationToken cancel = default(CancellationToken))
        {
            var t = timeout ?? TimeSpan.FromSeconds(10);
            var a = JsonNode.NewObject();
            a["topic"] = JsonNode.From(topic);
            a["data"] = JsonNode.FromObject(data);
            a["timeout_ms"] = JsonNode.From(Math.Max(1L, (long)t.TotalMilliseconds));
            try
            {
                return await CallAsync("bus.request", a, t + TimeSpan.FromSeconds(2), cancel).ConfigureAwait(false);
            }
            catch (CallTimeoutException)
            {
                throw new RemoteException("timeout", "no reply on '" + topic + "' within " + t.TotalMilliseconds + " ms", null, "bus.request");
            }
        }

        /// <summary>Answers a request (a <see cref="BusMessage"/> with <c>ReplyTo</c>).</summary>
        public async Task ReplyAsync(string replyTo, object data = null)
        {
            if (!_connected) await WaitConnectedAsync("bus.reply", _o.CallTimeout, CancellationToken.None).ConfigureAwait(false);
            var sb = new StringBuilder();
            sb.Append("{\"cmd\":\"bus.reply\",\"to\":");
            JsonNode.WriteString(sb, replyTo);
            sb.Append(",\"data\":");
            JsonNode.FromObject(data).Write(sb);
            sb.Append('}');
            await EnqueueAsync(Line(sb)).ConfigureAwait(false);
        }

        /// <summary>Events sent to this endpoint: <c>await foreach (var ev in client.Events)</c>.</summary>
        public AsyncQueue<BusEvent> Events { get { return _events; } }

        public Task<BusEvent> NextEventAsync(TimeSpan? timeout = null, CancellationToken cancel = default(CancellationToken))
        {
            return _events.NextAsync(timeout, cancel);
        }

        public AsyncQueue<Notice> Notices { get { return _notices; } }

        public Task<Notice> NextNoticeAsync(TimeSpan? timeout = null, CancellationToken cancel = default(CancellationToken))
        {
            return _notices.NextAsync(timeout, cancel);
        }

        // -- seed-004 shapes ------------------------------------------------------------------

        /// <summary>Registers this connection as machine <paramref name="machineId"/> (seed-004 <c>Register</c>);
        /// events sent to it arrive on <see cref="Events"/> (<see cref="WaitForEventAsync"/>). Completes once the
        /// daemon has taken it; <see cref="RemoteException"/> if it refused (e.g. the id is taken).</summary>
        public async Task RegisterMachineAsync(string machineId, CancellationToken cancel = default(CancellationToken))
        {
            await WaitConnectedAsync("Register", _o.CallTimeout, cancel).ConfigureAwait(false);
            await RegisterMachineNowAsync(machineId, _o.CallTimeout, cancel).ConfigureAwait(false);
            _machineId = machineId;
        }

        private async Task RegisterMachineNowAsync(string machineId, TimeSpan timeout, CancellationToken cancel)
        {
            var before = Volatile.Read(ref _compatErrors);
            var p = JsonNode.NewObject();
            p["MachineId"] = JsonNode.From(machineId);
            var proc = Process.GetCurrentProcess();
            p["ProcessName"] = JsonNode.From(proc.ProcessName);
            p["ProcessId"] = JsonNode.From(proc.Id);
            p["RegisteredAt"] = JsonNode.FromObject(DateTime.UtcNow);
            var m = JsonNode.NewObject();
            m["Type"] = JsonNode.From("Register");
            m["Payload"] = p;
            var sb = new StringBuilder();
            m.Write(sb);
            await EnqueueAsync(Line(sb)).ConfigureAwait(false);
            // The connection's lines are handled in order: once `ping` is answered, the registration is done.
            await CallNowAsync("ping", null, timeout, cancel).ConfigureAwait(false);
            if (Volatile.Read(ref _compatErrors) != before)
            {
                var e = _lastCompatError;
                var code = e != null && e.Raw != null ? JsonConv.ToStr(e.Raw["Payload"]["Code"]) : null;
                throw new RemoteException(code ?? "other", "machine '" + machineId + "' was not registered: " + (e != null ? e.Message : "refused"), null, "Register");
            }
        }

        /// <summary>Sends <paramref name="eventName"/> from <paramref name="source"/> to machine <paramref name="target"/>
        /// (seed-004 <c>SendEvent</c>; fire-and-forget: a refusal arrives on <see cref="Notices"/>).</summary>
        public async Task SendEventAsync(string source, string target, string eventName, object payload)
        {
            if (!_connected) await WaitConnectedAsync("SendEvent", _o.CallTimeout, CancellationToken.None).ConfigureAwait(false);
            var p = JsonNode.NewObject();
            p["SourceMachineId"] = JsonNode.From(source);
            p["TargetMachineId"] = JsonNode.From(target);
            p["EventName"] = JsonNode.From(eventName);
            p["Payload"] = JsonNode.FromObject(payload);
            p["Timestamp"] = JsonNode.FromObject(DateTime.UtcNow);
            var m = JsonNode.NewObject();
            m["Type"] = JsonNode.From("SendEvent");
            m["Payload"] = p;
            var sb = new StringBuilder();
            m.Write(sb);
            await EnqueueAsync(Line(sb)).ConfigureAwait(false);
        }

        /// <summary>The next event sent to this machine or endpoint; <see cref="CallTimeoutException"/> after <paramref name="timeout"/>.</summary>
        public Task<BusEvent> WaitForEventAsync(TimeSpan timeout, CancellationToken cancel = default(CancellationToken))
        {
            return _events.NextAsync(timeout, cancel);
        }
    }
}
