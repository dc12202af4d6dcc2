using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Net.Sockets;
using System.Reflection;
using System.Text;
using System.Threading.Tasks;
using Majordomo.Json;
using Majordomo.Protocol;

namespace Majordomo.Tests
{
    public static partial class Runner
    {
        static string home;
        static Daemon shared;

        static Daemon Shared()
        {
            Daemon.Require();
            if (shared == null)
            {
                home = Path.Combine(Path.GetTempPath(), "md-cs-" + Guid.NewGuid().ToString("N").Substring(0, 8));
                shared = new Daemon(home).Start();
                AppDomain.CurrentDomain.ProcessExit += (s, e) =>
                {
                    shared.Stop();
                    try { Directory.Delete(home, true); } catch (Exception) { }
                };
            }
            return shared;
        }

        static Task<MajordomoClient> Connect(Daemon d, string token = null, TimeSpan? maxBackoff = null)
        {
            return MajordomoClient.ConnectAsync(new ClientOptions
            {
                Instance = d.Instance,
                Home = d.Home,
                Token = token,
                Wait = TimeSpan.FromSeconds(5),
                CallTimeout = TimeSpan.FromSeconds(10),
                MaxBackoff = maxBackoff ?? TimeSpan.FromSeconds(5),
            });
        }

        static readonly TimeSpan Five = TimeSpan.FromSeconds(5);

        static void Register()
        {
            Add("generated code matches schema/", () =>
            {
                var p = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("python3", "\"" + Path.Combine(Clients, "gen_types.py") + "\" --check") { UseShellExecute = false });
                p.WaitForExit();
                Assert.Equal(0, p.ExitCode, "python3 clients/gen_types.py --check");
                return Task.FromResult(0);
            });

            Add("every command of schema/index.json is a typed method", () =>
            {
                var index = JsonNode.Parse(File.ReadAllText(Path.Combine(Repo, "schema", "index.json")));
                Assert.Equal(index["protocol"].AsLong, (long)Contract.Protocol, "protocol");
                var names = index["commands"].Select(c => c["name"].AsString).OrderBy(x => x, StringComparer.Ordinal).ToList();
                var ours = Contract.Commands.Select(c => c[0]).OrderBy(x => x, StringComparer.Ordinal).ToList();
                Assert.Equal(string.Join(",", names), string.Join(",", ours), "commands");
                foreach (var c in Contract.Commands)
                {
                    var m = typeof(MajordomoClient).GetMethod(c[2], BindingFlags.Public | BindingFlags.Instance);
                    Assert.True(m != null, "MajordomoClient." + c[2] + " for " + c[0]);
                    var schema = JsonNode.Parse(File.ReadAllText(Path.Combine(Repo, "schema", "commands", c[0] + ".json")));
                    Assert.Equal(schema["x-kind"].AsString, c[1], c[0]);
                }
                return Task.FromResult(0);
            });

            Add("JSON round trip", () =>
            {
                var text = "{\"a\":[1,2.5,-3e2,true,false,null],\"b\":\"q\\\"\\u00e9\\n\",\"c\":{}}";
                var n = JsonNode.Parse(text);
                Assert.Equal("{\"a\":[1,2.5,-3e2,true,false,null],\"b\":\"q\\\"é\\n\",\"c\":{}}", n.ToString());
                Assert.Equal(2.5, n["a"][1].AsDouble);
                Assert.Equal("{\"Data\":\"Hello\",\"N\":[1,2]}", JsonNode.FromObject(new { Data = "Hello", N = new[] { 1, 2 } }).ToString());
                Assert.True(n["missing"] == null && n["a"]["x"] == null, "missing members are null");
                try { JsonNode.Parse("{\"a\":"); throw new Exception("parsed bad JSON"); } catch (FormatException) { }
                return Task.FromResult(0);
            });

            Add("discovery follows the CLI's rules", () =>
            {
                var none = new Dictionary<string, string>();
                Assert.Equal("/s", Discovery.Resolve(new ClientOptions { Instance = "x", Socket = "/s" }, new Dictionary<string, string> { { "MAJORDOMO_SOCKET", "/e" } }).Socket);
                Assert.Equal("/e", Discovery.Resolve(new ClientOptions(), new Dictionary<string, string> { { "MAJORDOMO_SOCKET", "/e" }, { "MAJORDOMO_HOME", "/h" } }).Socket);
                Assert.Equal("/srv/md/web/majordomo.sock", Discovery.Resolve(new ClientOptions { Instance = "web", Home = "/srv/md" }, none, OsKind.Linux).Socket);
                var env = new Dictionary<string, string> { { "HOME", "/home/u" }, { "XDG_RUNTIME_DIR", "/run/user/1000" } };
                Assert.Equal("/run/user/1000/majordomo/a.sock", Discovery.Resolve(new ClientOptions { Instance = "a", System = false }, env, OsKind.Linux).Socket);
                Assert.Equal("/home/u/.local/state/majordomo/a/a.sock", Discovery.Resolve(new ClientOptions { Instance = "a", System = false }, new Dictionary<string, string> { { "HOME", "/home/u" } }, OsKind.Linux).Socket);
                Assert.Equal("/run/majordomo/a.sock", Discovery.Resolve(new ClientOptions { Instance = "a", System = true }, env, OsKind.Linux).Socket);
                Assert.Equal("/Users/u/Library/Application Support/majordomo/a/majordomo.sock", Discovery.Resolve(new ClientOptions { Instance = "a", System = false }, new Dictionary<string, string> { { "HOME", "/Users/u" } }, OsKind.MacOS).Socket);
                Assert.Equal(@"\\.\pipe\majordomo-a", Discovery.Resolve(new ClientOptions { Instance = "a", System = true }, none, OsKind.Windows).Socket);
                Assert.Equal(@"\\.\pipe\majordomo-jo_doe-a", Discovery.Resolve(new ClientOptions { Instance = "a", System = false }, new Dictionary<string, string> { { "USERNAME", "Jo Doe" }, { "LOCALAPPDATA", @"C:\L" } }, OsKind.Windows).Socket);
                Assert.Equal(Discovery.WindowsHomePipe(@"C:\md\a", "a"), Discovery.Resolve(new ClientOptions { Instance = "a", Home = @"C:\md" }, none, OsKind.Windows).Socket);
                // DefaultHasher over Path::hash, printed by rustc 1.95 on Linux.
                Assert.Equal(0x157b836cd32b57dcUL, Discovery.RustPathHash("/tmp/h/default", false));
                Assert.Equal(0xda512403de630c20UL, Discovery.RustPathHash("/a/./b//c/", false));
                Assert.Equal(0xe810b6c342514487UL, Discovery.RustPathHash("rel/x", false));
                Assert.Equal(0xd27c8e172b47749cUL, Discovery.RustPathHash("/tmp/majordomo-test-ü/inst_1", false));
                Assert.Equal(0xbd60acb658c79e45UL, Discovery.RustPathHash("/", false));
                Assert.Equal(Discovery.RustPathHash(@"C:\a\b", true), Discovery.RustPathHash("C:/a/b", true));
                var dir = Path.Combine(Path.GetTempPath(), "md-cs-cfg-" + Guid.NewGuid().ToString("N").Substring(0, 6));
                Directory.CreateDirectory(Path.Combine(dir, "i"));
                File.WriteAllText(Path.Combine(dir, "i", "config.toml"), "[log]\nlevel = \"info\"\n[paths]\n# moved\nsocket = \"/var/tmp/moved.sock\"  # here\n[bus]\n");
                Assert.Equal("/var/tmp/moved.sock", Discovery.Resolve(new ClientOptions { Instance = "i", Home = dir }, none, OsKind.Linux).Socket);
                Directory.Delete(dir, true);
                try { Discovery.Resolve(new ClientOptions { Instance = "Bad Name" }, none); throw new Exception("accepted a bad name"); }
                catch (ArgumentException e) { Assert.True(e.Message.Contains("invalid instance name"), e.Message); }
                return Task.FromResult(0);
            });

            Add("control commands", async () =>
            {
                var d = Shared();
                using (var md = await Connect(d))
                {
                    Assert.Equal(1L, md.HelloInfo.Protocol);
                    var st = await md.StatusAsync();
                    Assert.Equal("default", st.Instance);
                    Assert.Equal("home", st.Mode);
                    Assert.Equal(d.Socket, st.Socket);
                    Assert.True(st.Subsystems.Count > 0, "subsystems");
                    Assert.Equal("pong", await md.PingAsync());
                    Assert.True((await md.ConfigAsync()).Has("control"), "config has [control]");
                    Assert.True((await md.ReloadAsync()).Ok, "reload ok");
                    var ps = await md.PsAsync();
                    Assert.Equal("sleeper", ps.Programs.Single().Name);
                    await md.StopAsync(new NamesArgs { Name = "sleeper" });
                    await md.StartAsync(new NamesArgs { Names = new List<string> { "sleeper" } });
                    await md.RestartAsync(new NamesArgs { Name = "sleeper" });
                    for (int i = 0; i < 100; i++)
                    {
                        var row = (await md.PsAsync(new NamesArgs { Name = "sleeper" })).Programs[0];
                        if ((row.State == ProgramState.Running || row.State == ProgramState.Ready) && row.Pid.HasValue) break;
                        await Task.Delay(50);
                    }
                    Assert.Equal("sleeper", (await md.SignalAsync(new SignalArgs { Name = "sleeper", Signal = "CONT" })).Name);
                    Assert.True((await md.AlertsAsync()).Active != null, "alerts");
                    Assert.True((await md.MetricsAsync()) != null, "metrics");
                    Assert.Equal("default", (await md.ReportAsync()).Instance);
                    Assert.Equal("logn", (await md.NotifyTestAsync(new NotifyTestArgs { Name = "logn" })).Notifier);
                    Assert.True((await md.NotifyLogAsync(new NotifyLogArgs { Limit = 5 })).Counts != null, "notify.log");
                    Assert.True((await md.BusLsAsync()).Counters != null, "bus.ls");
                    try
                    {
                        Assert.True((await md.QueueStatsAsync()).Pipelines != null, "queue.stats");
                        Assert.True((await md.QueueLsAsync(new QueueLsArgs { Limit = 3 })).Items != null, "queue.ls");
                    }
                    catch (RemoteException e)
                    {
                        Assert.True(e.Code == "unknown_command" || e.Code == "not_found", e.Code);
                    }
                    await Assert.ThrowsAsync<RemoteException>(() => md.SignalAsync(new SignalArgs { Name = "nope", Signal = "HUP" }));
                    var u = await Assert.ThrowsAsync<RemoteException>(() => md.CallAsync("no.such.command", null));
                    Assert.Equal("unknown_command", u.Code);
                }
            });

            Add("a missing instance says what to do", async () =>
            {
                var d = Shared();
                var e = await Assert.ThrowsAsync<NotRunningException>(() => MajordomoClient.ConnectAsync(new ClientOptions { Instance = "ghost", Home = d.Home }));
                Assert.True(e.Message.StartsWith("no instance 'ghost' is running: socket " + Path.Combine(d.Home, "ghost", "majordomo.sock") + " not found; start it with `majordomo run --instance ghost`"), e.Message);
            });

            Add("token hello", async () =>
            {
                Shared();
                using (var t = new Daemon(home, "tok", "[log]\nfile = false\n[control]\ntoken = \"s3cret\"\n").Start())
                {
                    using (var ok = await Connect(t, "s3cret")) Assert.Equal("pong", await ok.PingAsync());
                    var e = await Assert.ThrowsAsync<RemoteException>(() => Connect(t, "wrong"));
                    Assert.Equal("forbidden", e.Code);
                    e = await Assert.ThrowsAsync<RemoteException>(() => Connect(t));
                    Assert.True(e.Message.Contains("MAJORDOMO_TOKEN"), e.Message);
                }
            });

            Add("seed-004: RegisterMachineAsync, SendEventAsync, WaitForEventAsync", async () =>
            {
                var d = Shared();
                using (var client1 = await Connect(d))
                using (var client2 = await Connect(d))
                {
                    await client1.RegisterMachineAsync("machine-1");
                    await client2.RegisterMachineAsync("machine-2");
                    await client1.SendEventAsync("machine-1", "machine-2", "TEST_EVENT", new { Data = "Hello" });
                    var received = await client2.WaitForEventAsync(Five);
                    Assert.Equal("TEST_EVENT", received.EventName);
                    Assert.Equal("machine-1", received.SourceMachineId);
                    Assert.Equal("machine-2", received.TargetMachineId);
                    Assert.Equal("Hello", received.Payload["Data"].AsString);
                    using (var c3 = await Connect(d))
                    {
                        var e = await Assert.ThrowsAsync<RemoteException>(() => c3.RegisterMachineAsync("machine-1"));
                        Assert.True(e.Message.Contains("machine-1"), e.Message);
                    }
                }
            });

            Add("events between endpoints", async () =>
            {
                var d = Shared();
                using (var a = await Connect(d))
                using (var b = await Connect(d))
                {
                    await a.RegisterAsync("cs-a");
                    await b.RegisterAsync("cs-b");
                    await a.SendAsync("cs-b", "job.done", new Dictionary<string, object> { { "n", 1 } });
                    var ev = await b.NextEventAsync(Five);
                    Assert.Equal("job.done", ev.Name);
                    Assert.Equal("cs-a", ev.From);
                    Assert.Equal(1L, ev.Data["n"].AsLong);
                    var e = await Assert.ThrowsAsync<RemoteException>(() => a.SendAsync("nobody", "x"));
                    Assert.Equal("not_found", e.Code);
                    using (var c = await Connect(d))
                        Assert.Equal("conflict", (await Assert.ThrowsAsync<RemoteException>(() => c.RegisterAsync("cs-a"))).Code);
                }
            });

            Add("publish, subscribe with wildcards, queue groups, await foreach", async () =>
            {
                var d = Shared();
                using (var pub = await Connect(d))
                using (var s1 = await Connect(d))
                using (var s2 = await Connect(d))
                {
                    var star = await s1.SubscribeAsync("orders.*.new");
                    var tail = await s2.SubscribeAsync("orders.>");
                    await pub.PublishAsync("orders.7.new", new { sku = "x" });
                    await pub.PublishAsync("orders.7.old", 2);
                    var m = await star.NextAsync(Five);
                    Assert.Equal("orders.7.new", m.Topic);
                    Assert.Equal("x", m.Data["sku"].AsString);
                    Assert.Equal("orders.7.new", (await tail.NextAsync(Five)).Topic);
                    Assert.Equal("orders.7.old", (await tail.NextAsync(Five)).Topic);
                    var q1 = await s1.SubscribeAsync("work.>", "workers");
                    var q2 = await s2.SubscribeAsync("work.>", "workers");
                    for (int i = 0; i < 20; i++) await pub.PublishAsync("work." + i, i);
                    Assert.Equal(1L, await pub.PublishAckedAsync("work.last", "x"));
                    var seen = new List<long>();
                    var until = DateTime.UtcNow + Five;
                    while (seen.Count < 21 && DateTime.UtcNow < until)
                    {
                        foreach (var q in new[] { q1, q2 })
                            while (q.Pending > 0) { var x = (await q.NextAsync()).Data; seen.Add(x.Kind == JsonKind.Number ? x.AsLong : -1); }
                        await Task.Delay(10);
                    }
                    Assert.Equal(21, seen.Count);
                    Assert.Equal(string.Join(",", Enumerable.Range(0, 20)), string.Join(",", seen.Where(x => x >= 0).OrderBy(x => x)));
                    await star.UnsubscribeAsync();
                    Assert.Equal(1L, await pub.PublishAckedAsync("orders.1.new"));
                    var it = await s1.SubscribeAsync("iter.>");
                    for (int i = 0; i < 3; i++) await pub.PublishAsync("iter." + i, i);
                    var e = it.GetAsyncEnumerator();
                    var got = new List<long>();
                    while (got.Count < 3 && await e.MoveNextAsync()) got.Add(e.Current.Data.AsLong);
                    Assert.Equal("0,1,2", string.Join(",", got));
                }
            });

            Add("request/reply, no responders, timeout", async () =>
            {
                var d = Shared();
                using (var server = await Connect(d))
                using (var client = await Connect(d))
                {
                    var sub = await server.SubscribeAsync("price.get");
                    _ = Task.Run(async () =>
                    {
                        var e = sub.GetAsyncEnumerator();
                        while (await e.MoveNextAsync()) await e.Current.RespondAsync(new { sku = e.Current.Data.AsString, price = 3 });
                    });
                    var r = await client.RequestAsync("price.get", "x", Five);
                    Assert.Equal("{\"sku\":\"x\",\"price\":3}", r.ToString());
                    Assert.Equal("no_responders", (await Assert.ThrowsAsync<RemoteException>(() => client.RequestAsync("nobody.home", 1, TimeSpan.FromSeconds(1)))).Code);
                    await server.SubscribeAsync("slow.op");
                    var sw = System.Diagnostics.Stopwatch.StartNew();
                    Assert.Equal("timeout", (await Assert.ThrowsAsync<RemoteException>(() => client.RequestAsync("slow.op", 1, TimeSpan.FromMilliseconds(300)))).Code);
                    Assert.True(sw.ElapsedMilliseconds < 3000, "timed out in time");
                }
            });

            Add("call timeout keeps the connection usable", async () =>
            {
                var d = Shared();
                using (var md = await Connect(d))
                {
                    var a = JsonNode.NewObject();
                    a["to"] = JsonNode.From("nobody-yet");
                    a["event"] = JsonNode.From("e");
                    a["wait_ms"] = JsonNode.From(2000);
                    var e = await Assert.ThrowsAsync<CallTimeoutException>(() => md.CallAsync("bus.send", a, TimeSpan.FromMilliseconds(200)));
                    Assert.True(e.Message.Contains("within 200 ms"), e.Message);
                    Assert.Equal("pong", await md.PingAsync());
                }
            });

            Add("reconnects and restores endpoint and subscriptions", async () =>
            {
                Shared();
                using (var r = new Daemon(home, "recon", "[log]\nfile = false\n").Start())
                using (var md = await Connect(r, null, TimeSpan.FromMilliseconds(200)))
                using (var other = await Connect(r, null, TimeSpan.FromMilliseconds(200)))
                using (var machine = await Connect(r, null, TimeSpan.FromMilliseconds(200)))
                {
                    await md.RegisterAsync("survivor");
                    await machine.RegisterMachineAsync("survivor-m");
                    var sub = await md.SubscribeAsync("after.>");
                    r.Kill();
                    Assert.Equal("disconnected", (await md.NextNoticeAsync(Five)).Kind);
                    r.Start();
                    Assert.Equal("pong", await md.PingAsync());
                    await other.PingAsync();
                    await other.PublishAsync("after.restart", 1);
                    Assert.Equal(1L, (await sub.NextAsync(Five)).Data.AsLong);
                    await other.SendAsync("survivor", "hi", null, TimeSpan.FromSeconds(2));
                    Assert.Equal("hi", (await md.NextEventAsync(Five)).Name);
                    await machine.PingAsync();
                    await other.SendEventAsync("other", "survivor-m", "PING", null);
                    Assert.Equal("survivor-m", (await machine.WaitForEventAsync(Five)).TargetMachineId);
                }
            });
        }
    }
}
