// Request/reply round trip and 1->1 publish throughput of the .NET client against a running
// daemon. Prints one JSON line. Used by scripts/client-bench.sh:
//   mono build/Bench.exe --socket /path/to/majordomo.sock --rtt 2000 --n 100000
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.Threading.Tasks;
using Majordomo;

static class Bench
{
    static readonly string Payload = new string('x', 62);

    static string Arg(string[] a, string name, string dflt)
    {
        var i = Array.IndexOf(a, "--" + name);
        return i >= 0 ? a[i + 1] : dflt;
    }

    static async Task<List<double>> Rtt(string socket, int n)
    {
        var o = new ClientOptions { Socket = socket, Wait = TimeSpan.FromSeconds(5) };
        var server = await MajordomoClient.ConnectAsync(o);
        var client = await MajordomoClient.ConnectAsync(new ClientOptions { Socket = socket, Wait = TimeSpan.FromSeconds(5) });
        var sub = await server.SubscribeAsync("bench.cs.rtt");
        var serve = Task.Run(async () =>
        {
            var e = sub.GetAsyncEnumerator();
            while (await e.MoveNextAsync()) await e.Current.RespondAsync(e.Current.Data);
        });
        var samples = new List<double>();
        var sw = new Stopwatch();
        for (int i = 0; i < n + n / 10; i++)
        {
            sw.Restart();
            await client.RequestAsync("bench.cs.rtt", Payload, TimeSpan.FromSeconds(10));
            if (i >= n / 10) samples.Add(sw.Elapsed.TotalMilliseconds * 1000);
        }
        server.Dispose();
        client.Dispose();
        samples.Sort();
        return samples;
    }

    static async Task<double> Throughput(string socket, int n)
    {
        var subClient = await MajordomoClient.ConnectAsync(new ClientOptions { Socket = socket, Wait = TimeSpan.FromSeconds(5) });
        var pub = await MajordomoClient.ConnectAsync(new ClientOptions { Socket = socket, Wait = TimeSpan.FromSeconds(5) });
        var sub = await subClient.SubscribeAsync("bench.cs.pub");
        var sw = Stopwatch.StartNew();
        var counter = Task.Run(async () =>
        {
            for (int seen = 0; seen < n; seen++) await sub.NextAsync(TimeSpan.FromSeconds(60));
            return sw.Elapsed;
        });
        for (int i = 0; i < n; i++) await pub.PublishAsync("bench.cs.pub", Payload);
        var end = await counter;
        pub.Dispose();
        subClient.Dispose();
        return n / end.TotalSeconds;
    }

    static int Main(string[] args)
    {
        var socket = Arg(args, "socket", "");
        var s = Rtt(socket, int.Parse(Arg(args, "rtt", "2000"))).Result;
        Func<double, double> pct = p => s[Math.Min(s.Count - 1, (int)(s.Count * p / 100))];
        var rate = Throughput(socket, int.Parse(Arg(args, "n", "100000"))).Result;
        var ci = CultureInfo.InvariantCulture;
        Console.WriteLine("{\"client\":\"dotnet\",\"rtt_p50_us\":" + pct(50).ToString("F1", ci) + ",\"rtt_p99_us\":" + pct(99).ToString("F1", ci)
            + ",\"pub_msgs_per_s\":" + rate.ToString("F0", ci) + "}");
        return 0;
    }
}
