using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Threading;
using System.Threading.Tasks;
using Majordomo.Json;

namespace Majordomo
{
    /// <summary>A message delivered to a subscription; <see cref="ReplyTo"/> is set when it is a request.</summary>
    public sealed class BusMessage
    {
        internal MajordomoClient Client;
        public long Sid { get; internal set; }
        public string Topic { get; internal set; }
        public JsonNode Data { get; internal set; }
        public string ReplyTo { get; internal set; }

        /// <summary>Answers this request (<c>bus.reply</c> to its <see cref="ReplyTo"/>).</summary>
        public Task RespondAsync(object data)
        {
            if (ReplyTo == null) throw new MajordomoException("the message on '" + Topic + "' is not a request: it has no reply_to");
            return Client.ReplyAsync(ReplyTo, data);
        }
    }

    /// <summary>An event sent to this connection's endpoint: by <c>bus.send</c>, or in the seed-004
    /// <c>SendEvent</c> shape (then <see cref="Target"/> is set). Both naming styles are offered.</summary>
    public sealed class BusEvent
    {
        public string Name { get; internal set; }
        public string From { get; internal set; }
        public string Target { get; internal set; }
        public JsonNode Data { get; internal set; }
        public string Timestamp { get; internal set; }

        public string EventName { get { return Name; } }
        public string SourceMachineId { get { return From; } }
        public string TargetMachineId { get { return Target; } }
        public JsonNode Payload { get { return Data; } }
    }

    /// <summary>What the daemon tells this connection (<c>dropped</c>, <c>taken_over</c>, <c>error</c>),
    /// and this client's own <c>disconnected</c> / <c>reconnected</c>.</summary>
    public sealed class Notice
    {
        public string Kind { get; internal set; }
        public string Message { get; internal set; }
        public long Count { get; internal set; }
        public JsonNode Raw { get; internal set; }
    }

    /// <summary>An unbounded queue read as an <see cref="IAsyncEnumerable{T}"/> (<c>await foreach</c>) or with <see cref="NextAsync"/>.</summary>
    public class AsyncQueue<T> : IAsyncEnumerable<T>
    {
        private readonly ConcurrentQueue<T> _items = new ConcurrentQueue<T>();
        private readonly SemaphoreSlim _count = new SemaphoreSlim(0);
        private volatile bool _closed;
        private readonly string _what;

        public AsyncQueue(string what) { _what = what; }

        internal void Push(T item)
        {
            _items.Enqueue(item);
            _count.Release();
        }

        internal void Close()
        {
            if (_closed) return;
            _closed = true;
            _count.Release();
        }

        public bool IsClosed { get { return _closed; } }

        /// <summary>Items received and not taken yet.</summary>
        public int Pending { get { return _items.Count; } }

        /// <summary>The next item. <see cref="CallTimeoutException"/> after <paramref name="timeout"/>;
        /// <see cref="ConnectionLostException"/> once closed and empty.</summary>
        public async Task<T> NextAsync(TimeSpan? timeout = null, CancellationToken cancel = default(CancellationToken))
        {
            var t = timeout ?? Timeout.InfiniteTimeSpan;
            for (;;)
            {
                if (!await _count.WaitAsync(t, cancel).ConfigureAwait(false))
                    throw new CallTimeoutException(_what, t);
                T item;
                if (_items.TryDequeue(out item)) return item;
                if (_closed)
                {
                    _count.Release(); // wake the next reader too
                    throw new ConnectionLostException("no more " + _what + "s: closed");
                }
            }
        }

        public IAsyncEnumerator<T> GetAsyncEnumerator(CancellationToken cancellationToken = default(CancellationToken))
        {
            return new Enumerator(this, cancellationToken);
        }

        private sealed class Enumerator : IAsyncEnumerator<T>
        {
            private readonly AsyncQueue<T> _q;
            private readonly CancellationToken _cancel;
            public T Current { get; private set; }

            public Enumerator(AsyncQueue<T> q, CancellationToken cancel) { _q = q; _cancel = cancel; }

            public ValueTask<bool> MoveNextAsync() { return new ValueTask<bool>(Next()); }

            private async Task<bool> Next()
            {
                try
                {
                    Current = await _q.NextAsync(null, _cancel).ConfigureAwait(false);
                    return true;
                }
                catch (ConnectionLostException)
                {
                    return false;
                }
            }

            public ValueTask DisposeAsync() { return default(ValueTask); }
        }
    }

    /// <summary>Messages on a topic pattern: <c>await foreach (var m in sub)</c>, or <c>await sub.NextAsync(timeout)</c>.</summary>
    public sealed class Subscription : AsyncQueue<BusMessage>, IDisposable
    {
        private readonly MajordomoClient _client;
        public long Sid { get; private set; }
        public string Pattern { get; private set; }
        public string Queue { get; private set; }

        internal Subscription(MajordomoClient client, long sid, string pattern, string queue)
            : base("message on " + pattern)
        {
            _client = client;
            Sid = sid;
            Pattern = pattern;
            Queue = queue;
        }

        public Task UnsubscribeAsync() { return _client.UnsubscribeAsync(this); }

        public void Dispose() { UnsubscribeAsync(); }
    }
}
