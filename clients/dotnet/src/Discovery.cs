// Finding an instance's socket or pipe, with the same rules as the `majordomo` CLI.
using System;
using System.Collections.Generic;
using System.IO;
using System.Text;
using System.Text.RegularExpressions;

namespace Majordomo
{
    /// <summary>Where an instance listens.</summary>
    public sealed class Place
    {
        public string Instance { get; set; }
        /// <summary>A Unix socket path, or a pipe name <c>\\.\pipe\...</c> on Windows.</summary>
        public string Socket { get; set; }
        public string ConfigFile { get; set; }
        /// <summary><c>system</c>, <c>user</c>, <c>home</c> or <c>explicit</c>.</summary>
        public string Mode { get; set; }
    }

    /// <summary>The operating systems discovery knows.</summary>
    public enum OsKind { Linux, MacOS, Windows }

    /// <summary>
    /// An explicit socket, else <c>MAJORDOMO_SOCKET</c>, else the instance's place (<c>Home</c> /
    /// <c>MAJORDOMO_HOME</c>, or the system or per-user places of this OS), moved by the config
    /// file's <c>[paths] socket</c> (or <c>MAJORDOMO_PATHS__SOCKET</c>) when it sets one.
    /// </summary>
    public static class Discovery
    {
        public const string DefaultInstance = "default";
        private static readonly Regex Name = new Regex("^[a-z0-9_-]{1,32}$");

        public static OsKind CurrentOs()
        {
            var p = Environment.OSVersion.Platform;
            if (p == PlatformID.Win32NT || p == PlatformID.Win32Windows || p == PlatformID.Win32S) return OsKind.Windows;
            if (p == PlatformID.MacOSX || File.Exists("/System/Library/CoreServices/SystemVersion.plist")) return OsKind.MacOS;
            return OsKind.Linux;
        }

        public static void ValidateInstance(string name)
        {
            if (name == null || !Name.IsMatch(name))
                throw new ArgumentException("invalid instance name '" + name + "': use 1 to 32 characters from a-z, 0-9, '_' and '-'");
        }

        /// <summary>Resolves <paramref name="o"/>; <paramref name="env"/> and <paramref name="os"/> replace the process's (tests).</summary>
        public static Place Resolve(ClientOptions o, IDictionary<string, string> env = null, OsKind? os = null)
        {
            Func<string, string> E = k =>
            {
                if (env != null) { string v; return env.TryGetValue(k, out v) && v != "" ? v : null; }
                var x = Environment.GetEnvironmentVariable(k);
                return string.IsNullOrEmpty(x) ? null : x;
            };
            var kind = os ?? CurrentOs();
            var name = o.Instance ?? E("MAJORDOMO_INSTANCE") ?? DefaultInstance;
            ValidateInstance(name);
            var explicitSocket = o.Socket ?? E("MAJORDOMO_SOCKET");
            if (explicitSocket != null) return new Place { Instance = name, Socket = explicitSocket, Mode = "explicit" };
            var home = o.Home ?? E("MAJORDOMO_HOME");
            string mode;
            if (home != null) mode = "home";
            else if (o.System.HasValue) mode = o.System.Value ? "system" : "user";
            else mode = kind != OsKind.Windows && Environment.UserName == "root" && env == null ? "system" : "user";
            string sock, cfg;
            Places(name, mode, home, kind, E, out sock, out cfg);
            cfg = o.Config ?? E("MAJORDOMO_CONFIG") ?? cfg;
            var moved = E("MAJORDOMO_PATHS__SOCKET") ?? (cfg != null ? ConfigSocket(cfg) : null);
            return new Place { Instance = name, Socket = moved ?? sock, ConfigFile = cfg, Mode = mode };
        }

        private static string J(params string[] parts) { return string.Join("/", parts); }

        private static void Places(string name, string mode, string home, OsKind os, Func<string, string> E, out string sock, out string cfg)
        {
            if (mode == "home")
            {
                if (os == OsKind.Windows)
                {
                    var root = home.TrimEnd('\\', '/') + "\\" + name;
                    sock = WindowsHomePipe(root, name);
                    cfg = root + "\\config.toml";
                    return;
                }
                var r = home.TrimEnd('/') + "/" + name;
                sock = r + "/majordomo.sock";
                cfg = r + "/config.toml";
                return;
            }
            if (os == OsKind.Windows)
            {
                if (mode == "system")
                {
                    sock = @"\\.\pipe\majordomo-" + name;
                    cfg = (E("ProgramData") ?? @"C:\ProgramData") + @"\majordomo\" + name + @"\config.toml";
                    return;
                }
                var user = new StringBuilder();
                foreach (var c in E("USERNAME") ?? "user")
                    user.Append(c < 128 && char.IsLetterOrDigit(c) ? char.ToLowerInvariant(c) : '_');
                sock = @"\\.\pipe\majordomo-" + user + "-" + name;
                var local = E("LOCALAPPDATA") ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), "AppData", "Local");
                cfg = local + @"\majordomo\" + name + @"\config.toml";
                return;
            }
            var userHome = E("HOME") ?? Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
            if (os == OsKind.MacOS)
            {
                if (mode == "system")
                {
                    sock = "/var/run/majordomo/" + name + ".sock";
                    cfg = "/Library/Application Support/majordomo/" + name + ".toml";
                    return;
                }
                var lib = userHome.TrimEnd('/') + "/Library/Application Support/majordomo";
                sock = J(lib, name, "majordomo.sock");
                cfg = J(lib, name + ".toml");
                return;
            }
            if (mode == "system")
            {
                sock = "/run/majordomo/" + name + ".sock";
                cfg = "/etc/majordomo/" + name + ".toml";
                return;
            }
            var config = E("XDG_CONFIG_HOME") ?? J(userHome.TrimEnd('/'), ".config");
            var state = E("XDG_STATE_HOME") ?? J(userHome.TrimEnd('/'), ".local", "state");
            var runtime = E("XDG_RUNTIME_DIR");
            var runDir = runtime != null ? J(runtime.TrimEnd('/'), "majordomo") : J(state.TrimEnd('/'), "majordomo", name);
            sock = J(runDir, name + ".sock");
            cfg = J(config.TrimEnd('/'), "majordomo", name + ".toml");
        }

        private static readonly Regex Section = new Regex("^\\s*\\[\\s*([A-Za-z0-9_.\\-\"]+)\\s*\\]\\s*(#.*)?$");
        private static readonly Regex SocketLine = new Regex("^\\s*socket\\s*=\\s*(?:\"((?:[^\"\\\\]|\\\\.)*)\"|'([^']*)')\\s*(#.*)?$");

        /// <summary>The <c>[paths] socket</c> of a TOML config file, if it sets one (a small scan, not a TOML parser).</summary>
        public static string ConfigSocket(string file)
        {
            string[] lines;
            try { lines = File.ReadAllLines(file); }
            catch (Exception) { return null; }
            var section = "";
            foreach (var line in lines)
            {
                var s = Section.Match(line);
                if (s.Success) { section = s.Groups[1].Value.Replace("\"", ""); continue; }
                if (section != "paths") continue;
                var m = SocketLine.Match(line);
                if (m.Success)
                    return m.Groups[1].Success ? Majordomo.Json.JsonNode.Parse("\"" + m.Groups[1].Value + "\"").AsString : m.Groups[2].Value;
            }
            return null;
        }

        // --- Windows `--home` pipe names: Rust's DefaultHasher (SipHash-1-3, zero keys) over
        // Path::hash of HOME\NAME. MAJORDOMO_SOCKET avoids depending on it.

        private static ulong Rotl(ulong x, int b) { return (x << b) | (x >> (64 - b)); }

        public static ulong SipHash13(byte[] data)
        {
            ulong v0 = 0x736f6d6570736575UL, v1 = 0x646f72616e646f6dUL, v2 = 0x6c7967656e657261UL, v3 = 0x7465646279746573UL;
            Action round = () =>
            {
                v0 += v1; v1 = Rotl(v1, 13) ^ v0; v0 = Rotl(v0, 32);
                v2 += v3; v3 = Rotl(v3, 16) ^ v2;
                v0 += v3; v3 = Rotl(v3, 21) ^ v0;
                v2 += v1; v1 = Rotl(v1, 17) ^ v2; v2 = Rotl(v2, 32);
            };
            int n = data.Length, end = n - n % 8;
            for (int i = 0; i < end; i += 8)
            {
                ulong m = BitConverter.ToUInt64(LittleEndian(data, i, 8), 0);
                v3 ^= m; round(); v0 ^= m;
            }
            ulong b = ((ulong)(n & 0xff)) << 56;
            for (int i = end; i < n; i++) b |= ((ulong)data[i]) << (8 * (i - end));
            v3 ^= b; round(); v0 ^= b;
            v2 ^= 0xff; round(); round(); round();
            return v0 ^ v1 ^ v2 ^ v3;
        }

        private static byte[] LittleEndian(byte[] data, int offset, int count)
        {
            var b = new byte[count];
            Array.Copy(data, offset, b, 0, count);
            if (!BitConverter.IsLittleEndian) Array.Reverse(b);
            return b;
        }

        private static void PutU64(List<byte> o, ulong x) { for (int i = 0; i < 8; i++) o.Add((byte)(x >> (8 * i))); }

        /// <summary>The bytes Rust's <c>Path::hash</c> feeds its hasher (a plain or drive-letter path).</summary>
        public static byte[] RustPathHashBytes(string path, bool windows)
        {
            var raw = Encoding.UTF8.GetBytes(path);
            var o = new List<byte>();
            int off = 0;
            Func<byte, bool> sep = c => c == (byte)'/' || (windows && c == (byte)'\\');
            if (windows && raw.Length >= 2 && raw[1] == (byte)':' && char.IsLetter((char)raw[0]))
            {
                PutU64(o, 5); // Prefix::Disk, an isize discriminant
                o.Add((byte)char.ToUpperInvariant((char)raw[0]));
                off = 2;
            }
            int start = off;
            ulong hashed = 0;
            Action<int, int> take = (a, b) =>
            {
                for (int i = a; i < b; i++) o.Add(raw[i]);
                ulong x = hashed + (ulong)(b - a);
                hashed = (x >> 2) | (x << 62);
            };
            for (int i = off; i < raw.Length; i++)
            {
                if (!sep(raw[i])) continue;
                if (i > start) take(start, i);
                start = i + 1;
                int rest = raw.Length - start;
                if ((rest == 1 && raw[start] == (byte)'.') || (rest >= 2 && raw[start] == (byte)'.' && sep(raw[start + 1]))) start += 1;
            }
            if (start < raw.Length) take(start, raw.Length);
            PutU64(o, hashed);
            return o.ToArray();
        }

        public static ulong RustPathHash(string path, bool windows) { return SipHash13(RustPathHashBytes(path, windows)); }

        /// <summary>The pipe of an instance under a home folder on Windows; <paramref name="root"/> is <c>HOME\NAME</c>.</summary>
        public static string WindowsHomePipe(string root, string name)
        {
            return @"\\.\pipe\majordomo-" + RustPathHash(root, true).ToString("x16") + "-" + name;
        }
    }
}
