// A small test runner (xunit needs NuGet and the dotnet SDK; this needs only Mono) and the
// daemon fixture: MAJORDOMO_BIN (a path) or `majordomo` on PATH, each daemon in a temporary
// --home. Without a binary the daemon tests are skipped, unless MAJORDOMO_REQUIRE_DAEMON=1.
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Threading;
using System.Threading.Tasks;

namespace Majordomo.Tests
{
    public sealed class SkipException : Exception
    {
        public SkipException(string why) : base(why) { }
    }

    public static class Assert
    {
        public static void True(bool cond, string what = "expected true")
        {
            if (!cond) throw new Exception("assertion failed: " + what);
        }

        public static void Equal<T>(T want, T got, string what = "")
        {
            if (!EqualityComparer<T>.Default.Equals(want, got))
                throw new Exception("assertion failed" + (what != "" ? " (" + what + ")" : "") + ": expected <" + want + ">, got <" + got + ">");
        }

        public static async Task<TE> ThrowsAsync<TE>(Func<Task> f) where TE : Exception
        {
            try
            {
                await f();
            }
            catch (TE e)
            {
                return e;
            }
            catch (Exception e)
            {
                throw new Exception("expected " + typeof(TE).Name + ", got " + e.GetType().Name + ": " + e.Message);
            }
            throw new Exception("expected " + typeof(TE).Name + ", nothing was thrown");
        }
    }

    public sealed class Daemon : IDisposable
    {
        public static readonly string Bin = FindBin();
        public readonly string Home;
        public readonly string Instance;
        public readonly string Socket;
        private readonly string _dir;
        private Process _proc;

        private static string FindBin()
        {
            var b = Environment.GetEnvironmentVariable("MAJORDOMO_BIN");
            if (!string.IsNullOrEmpty(b)) return b;
            foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator))
            {
                var p = Path.Combine(dir, "majordomo");
                if (File.Exists(p)) return p;
            }
            return null;
        }

        public static void Require()
        {
            if (Bin != null) return;
            const string msg = "no daemon binary: set MAJORDOMO_BIN=/path/to/majordomo or put majordomo on PATH";
            if (Environment.GetEnvironmentVariable("MAJORDOMO_REQUIRE_DAEMON") == "1") throw new Exception(msg);
            throw new SkipException(msg);
        }

        public Daemon(string home, string instance = "default", string config = null)
        {
            Require();
            Home = home;
            Instance = instance;
            _dir = Path.Combine(home, instance);
            Directory.CreateDirectory(_dir);
            var text = config ?? File.ReadAllText(Path.Combine(Runner.Clients, "testdata", "config.toml"));
            File.WriteAllText(Path.Combine(_dir, "config.toml"), text);
            Socket = Path.Combine(_dir, "majordomo.sock");
        }

        public Process Proc { get { return _proc; } }

        public Daemon Start()
        {
            if (File.Exists(Socket)) File.Delete(Socket);
            var psi = new ProcessStartInfo(Bin, "--home \"" + Home + "\" --instance " + Instance + " run")
            {
                UseShellExecute = false,
                RedirectStandardOutput = true,
                RedirectStandardError = true,
            };
            var remove = new List<string>();
            foreach (string k in psi.EnvironmentVariables.Keys) if (k.StartsWith("MAJORDOMO_")) remove.Add(k);
            foreach (var k in remove) psi.EnvironmentVariables.Remove(k);
            _proc = Process.Start(psi);
            _proc.OutputDataReceived += (s, e) => { };
            _proc.ErrorDataReceived += (s, e) => { };
            _proc.BeginOutputReadLine();
            _proc.BeginErrorReadLine();
            var sw = Stopwatch.StartNew();
            while (!File.Exists(Socket))
            {
                if (_proc.HasExited) throw new Exception("the daemon exited with " + _proc.ExitCode);
                if (sw.Elapsed > TimeSpan.FromSeconds(15)) throw new Exception("the daemon did not create " + Socket);
                Thread.Sleep(20);
            }
            return this;
        }

        public void Kill()
        {
            if (_proc != null && !_proc.HasExited)
            {
                _proc.Kill();
                _proc.WaitForExit(10000);
            }
        }

        public void Stop()
        {
            if (_proc != null && !_proc.HasExited)
            {
                Process.Start("kill", "-TERM " + _proc.Id).WaitForExit();
                if (!_proc.WaitForExit(10000)) _proc.Kill();
            }
        }

        public void Dispose() { Stop(); }
    }

    public static partial class Runner
    {
        public static string Clients;
        public static string Repo;
        private static readonly List<KeyValuePair<string, Func<Task>>> Tests = new List<KeyValuePair<string, Func<Task>>>();

        static void Add(string name, Func<Task> f) { Tests.Add(new KeyValuePair<string, Func<Task>>(name, f)); }

        public static int Main(string[] args)
        {
            // build/Tests.exe -> clients/dotnet -> clients
            var exeDir = Path.GetDirectoryName(typeof(Runner).Assembly.Location);
            Clients = Path.GetFullPath(Path.Combine(exeDir, "..", ".."));
            Repo = Path.GetFullPath(Path.Combine(Clients, ".."));
            Register();
            int passed = 0, failed = 0, skipped = 0, n = 0;
            var filter = args.Length > 0 ? args[0] : null;
            foreach (var t in Tests)
            {
                if (filter != null && !t.Key.Contains(filter)) continue;
                n++;
                var sw = Stopwatch.StartNew();
                try
                {
                    var task = Task.Run(t.Value);
                    if (!task.Wait(TimeSpan.FromSeconds(60))) throw new TimeoutException("the test did not finish within 60 s");
                    passed++;
                    Console.WriteLine("ok " + n + " - " + t.Key + " (" + sw.ElapsedMilliseconds + " ms)");
                }
                catch (Exception e)
                {
                    var inner = e is AggregateException && e.InnerException != null ? e.InnerException : e;
                    if (inner is SkipException)
                    {
                        skipped++;
                        Console.WriteLine("ok " + n + " - " + t.Key + " # SKIP " + inner.Message);
                        continue;
                    }
                    failed++;
                    Console.WriteLine("not ok " + n + " - " + t.Key);
                    Console.WriteLine("  # " + inner.ToString().Replace("\n", "\n  # "));
                }
            }
            Console.WriteLine("dotnet: " + passed + " passed, " + failed + " failed" + (skipped > 0 ? ", " + skipped + " skipped" : ""));
            return failed == 0 ? 0 : 1;
        }
    }
}
