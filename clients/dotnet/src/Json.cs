// A small JSON value type, parser and writer: netstandard2.0 has no JSON library of its own, and
// this client takes no dependency (it also builds with Mono's mcs).
using System;
using System.Collections;
using System.Collections.Generic;
using System.Globalization;
using System.Reflection;
using System.Text;

namespace Majordomo.Json
{
    public enum JsonKind { Null, Bool, Number, String, Array, Object }

    /// <summary>Any JSON value. Indexing a missing member or a non-object gives <c>null</c>.</summary>
    public sealed class JsonNode : IEnumerable<JsonNode>
    {
        public static readonly JsonNode Null = new JsonNode(JsonKind.Null);
        public static readonly JsonNode True = new JsonNode(JsonKind.Bool) { _bool = true };
        public static readonly JsonNode False = new JsonNode(JsonKind.Bool) { _bool = false };

        public JsonKind Kind { get; private set; }
        private bool _bool;
        private string _text; // number text or string value
        private List<JsonNode> _items;
        private List<string> _keys;
        private Dictionary<string, JsonNode> _members;

        private JsonNode(JsonKind kind) { Kind = kind; }

        public static JsonNode NewObject()
        {
            return new JsonNode(JsonKind.Object) { _keys = new List<string>(), _members = new Dictionary<string, JsonNode>() };
        }

        public static JsonNode NewArray() { return new JsonNode(JsonKind.Array) { _items = new List<JsonNode>() }; }

        public static JsonNode From(string s) { return s == null ? Null : new JsonNode(JsonKind.String) { _text = s }; }
        public static JsonNode From(bool b) { return b ? True : False; }
        public static JsonNode From(bool? b) { return b.HasValue ? From(b.Value) : Null; }
        public static JsonNode From(long n) { return new JsonNode(JsonKind.Number) { _text = n.ToString(CultureInfo.InvariantCulture) }; }
        public static JsonNode From(long? n) { return n.HasValue ? From(n.Value) : Null; }
        public static JsonNode From(int n) { return From((long)n); }
        public static JsonNode From(double d)
        {
            if (double.IsNaN(d) || double.IsInfinity(d)) return Null;
            if (Math.Floor(d) == d && Math.Abs(d) < 1e15) return From((long)d);
            return new JsonNode(JsonKind.Number) { _text = d.ToString("R", CultureInfo.InvariantCulture) };
        }
        public static JsonNode From(double? d) { return d.HasValue ? From(d.Value) : Null; }

        /// <summary>Converts a .NET value: JsonNode, null, string, bool, numbers, enums (as strings),
        /// DateTime (ISO 8601), dictionaries, sequences, and objects (public properties, as named:
        /// <c>new { Data = "x" }</c> gives <c>{"Data":"x"}</c>).</summary>
        public static JsonNode FromObject(object value)
        {
            if (value == null) return Null;
            var node = value as JsonNode;
            if (node != null) return node;
            var s = value as string;
            if (s != null) return From(s);
            if (value is bool) return From((bool)value);
            if (value is int || value is long || value is short || value is byte || value is sbyte || value is ushort || value is uint)
                return From(Convert.ToInt64(value, CultureInfo.InvariantCulture));
            if (value is ulong) return new JsonNode(JsonKind.Number) { _text = ((ulong)value).ToString(CultureInfo.InvariantCulture) };
            if (value is double || value is float || value is decimal) return From(Convert.ToDouble(value, CultureInfo.InvariantCulture));
            if (value is Enum || value is Guid || value is char) return From(value.ToString());
            if (value is DateTime) return From(((DateTime)value).ToUniversalTime().ToString("yyyy-MM-ddTHH:mm:ss.fffZ", CultureInfo.InvariantCulture));
            if (value is DateTimeOffset) return From(((DateTimeOffset)value).UtcDateTime.ToString("yyyy-MM-ddTHH:mm:ss.fffZ", CultureInfo.InvariantCulture));
            if (value is TimeSpan) return From(((TimeSpan)value).TotalMilliseconds);
            var dict = value as IDictionary;
            if (dict != null)
            {
                var o = NewObject();
                foreach (DictionaryEntry e in dict) o[Convert.ToString(e.Key, CultureInfo.InvariantCulture)] = FromObject(e.Value);
                return o;
            }
            var seq = value as IEnumerable;
            if (seq != null)
            {
                var a = NewArray();
                foreach (var x in seq) a.Add(FromObject(x));
                return a;
            }
            var obj = NewObject();
            foreach (var p in value.GetType().GetProperties(BindingFlags.Public | BindingFlags.Instance))
            {
                if (p.GetIndexParameters().Length > 0 || !p.CanRead) continue;
                obj[p.Name] = FromObject(p.GetValue(value, null));
            }
            return obj;
        }

        public bool IsNull { get { return Kind == JsonKind.Null; } }

        /// <summary>The member <paramref name="key"/> of an object; <c>null</c> when absent or not an object. Setting adds or replaces it.</summary>
        public JsonNode this[string key]
        {
            get
            {
                JsonNode v;
                if (Kind != JsonKind.Object || !_members.TryGetValue(key, out v)) return null;
                return v;
            }
            set
            {
                if (Kind != JsonKind.Object) throw new InvalidOperationException("not a JSON object");
                if (!_members.ContainsKey(key)) _keys.Add(key);
                _members[key] = value ?? Null;
            }
        }

        public JsonNode this[int index]
        {
            get { return Kind == JsonKind.Array && index >= 0 && index < _items.Count ? _items[index] : null; }
        }

        public void Add(JsonNode item)
        {
            if (Kind != JsonKind.Array) throw new InvalidOperationException("not a JSON array");
            _items.Add(item ?? Null);
        }

        public bool Has(string key) { return Kind == JsonKind.Object && _members.ContainsKey(key); }

        public int Count
        {
            get { return Kind == JsonKind.Array ? _items.Count : Kind == JsonKind.Object ? _keys.Count : 0; }
        }

        public IEnumerable<string> Keys { get { return Kind == JsonKind.Object ? (IEnumerable<string>)_keys : new string[0]; } }

        public IEnumerator<JsonNode> GetEnumerator()
        {
            if (Kind == JsonKind.Array) return _items.GetEnumerator();
            if (Kind == JsonKind.Object) return _keys.ConvertAll(k => _members[k]).GetEnumerator();
            return new List<JsonNode>().GetEnumerator();
        }

        IEnumerator IEnumerable.GetEnumerator() { return GetEnumerator(); }

        public string AsString { get { return Kind == JsonKind.String ? _text : Kind == JsonKind.Number ? _text : null; } }
        public bool AsBool { get { return Kind == JsonKind.Bool && _bool; } }

        public long AsLong
        {
            get
            {
                if (Kind != JsonKind.Number) return 0;
                long n;
                if (long.TryParse(_text, NumberStyles.Integer, CultureInfo.InvariantCulture, out n)) return n;
                return (long)AsDouble;
            }
        }

        public double AsDouble
        {
            get
            {
                double d;
                return Kind == JsonKind.Number && double.TryParse(_text, NumberStyles.Float, CultureInfo.InvariantCulture, out d) ? d : 0;
            }
        }

        public override string ToString()
        {
            var sb = new StringBuilder();
            Write(sb);
            return sb.ToString();
        }

        public void Write(StringBuilder sb)
        {
            switch (Kind)
            {
                case JsonKind.Null: sb.Append("null"); break;
                case JsonKind.Bool: sb.Append(_bool ? "true" : "false"); break;
                case JsonKind.Number: sb.Append(_text); break;
                case JsonKind.String: WriteString(sb, _text); break;
                case JsonKind.Array:
                    sb.Append('[');
                    for (int i = 0; i < _items.Count; i++)
                    {
                        if (i > 0) sb.Append(',');
                        _items[i].Write(sb);
                    }
                    sb.Append(']');
                    break;
                default:
                    sb.Append('{');
                    for (int i = 0; i < _keys.Count; i++)
                    {
                        if (i > 0) sb.Append(',');
                        WriteString(sb, _keys[i]);
                        sb.Append(':');
                        _members[_keys[i]].Write(sb);
                    }
                    sb.Append('}');
                    break;
            }
        }

        public static void WriteString(StringBuilder sb, string s)
        {
            sb.Append('"');
            foreach (var c in s)
            {
                switch (c)
                {
                    case '"': sb.Append("\\\""); break;
                    case '\\': sb.Append("\\\\"); break;
                    case '\n': sb.Append("\\n"); break;
                    case '\r': sb.Append("\\r"); break;
                    case '\t': sb.Append("\\t"); break;
                    default:
                        if (c < 0x20) sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                        else sb.Append(c);
                        break;
                }
            }
            sb.Append('"');
        }

        /// <summary>Parses JSON text; <see cref="FormatException"/> with the position when it is not JSON.</summary>
        public static JsonNode Parse(string text)
        {
            var p = new Parser(text);
            p.Ws();
            var v = p.Value(0);
            p.Ws();
            if (p.Pos != text.Length) throw p.Error("trailing characters");
            return v;
        }

        private sealed class Parser
        {
            private readonly string _s;
            public int Pos;
            public Parser(string s) { _s = s; }

            public FormatException Error(string what)
            {
                return new FormatException("malformed JSON at character " + Pos + ": " + what);
            }

            public void Ws()
            {
                while (Pos < _s.Length && (_s[Pos] == ' ' || _s[Pos] == '\t' || _s[Pos] == '\n' || _s[Pos] == '\r')) Pos++;
            }

            public JsonNode Value(int depth)
            {
                if (depth > 256) throw Error("nested too deep");
                if (Pos >= _s.Length) throw Error("unexpected end");
                char c = _s[Pos];
                switch (c)
                {
                    case '{':
                    {
                        Pos++;
                        var o = NewObject();
                        Ws();
                        if (Pos < _s.Length && _s[Pos] == '}') { Pos++; return o; }
                        for (;;)
                        {
                            Ws();
                            if (Pos >= _s.Length || _s[Pos] != '"') throw Error("expected a member name");
                            var k = Str();
                            Ws();
                            if (Pos >= _s.Length || _s[Pos] != ':') throw Error("expected ':'");
                            Pos++;
                            Ws();
                            o[k] = Value(depth + 1);
                            Ws();
                            if (Pos < _s.Length && _s[Pos] == ',') { Pos++; continue; }
                            if (Pos < _s.Length && _s[Pos] == '}') { Pos++; return o; }
                            throw Error("expected ',' or '}'");
                        }
                    }
                    case '[':
                    {
                        Pos++;
                        var a = NewArray();
                        Ws();
                        if (Pos < _s.Length && _s[Pos] == ']') { Pos++; return a; }
                        for (;;)
                        {
                            Ws();
                            a.Add(Value(depth + 1));
                            Ws();
                            if (Pos < _s.Length && _s[Pos] == ',') { Pos++; continue; }
                            if (Pos < _s.Length && _s[Pos] == ']') { Pos++; return a; }
                            throw Error("expected ',' or ']'");
                        }
                    }
                    case '"': return new JsonNode(JsonKind.String) { _text = Str() };
                    case 't': Lit("true"); return True;
                    case 'f': Lit("false"); return False;
                    case 'n': Lit("null"); return Null;
                    default:
                        if (c == '-' || (c >= '0' && c <= '9')) return Num();
                        throw Error("unexpected '" + c + "'");
                }
            }

            private void Lit(string word)
            {
                if (string.CompareOrdinal(_s, Pos, word, 0, word.Length) != 0) throw Error("expected " + word);
                Pos += word.Length;
            }

            private JsonNode Num()
            {
                int start = Pos;
                if (_s[Pos] == '-') Pos++;
                while (Pos < _s.Length && "0123456789.eE+-".IndexOf(_s[Pos]) >= 0) Pos++;
                var t = _s.Substring(start, Pos - start);
                double d;
                if (!double.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out d)) throw Error("bad number " + t);
                return new JsonNode(JsonKind.Number) { _text = t };
            }

            private string Str()
            {
                Pos++; // opening quote
                var sb = new StringBuilder();
                for (;;)
                {
                    if (Pos >= _s.Length) throw Error("unterminated string");
                    char c = _s[Pos++];
                    if (c == '"') return sb.ToString();
                    if (c != '\\') { sb.Append(c); continue; }
                    if (Pos >= _s.Length) throw Error("unterminated escape");
                    char e = _s[Pos++];
                    switch (e)
                    {
                        case '"': sb.Append('"'); break;
                        case '\\': sb.Append('\\'); break;
                        case '/': sb.Append('/'); break;
                        case 'b': sb.Append('\b'); break;
                        case 'f': sb.Append('\f'); break;
                        case 'n': sb.Append('\n'); break;
                        case 'r': sb.Append('\r'); break;
                        case 't': sb.Append('\t'); break;
                        case 'u':
                            if (Pos + 4 > _s.Length) throw Error("short \\u escape");
                            sb.Append((char)int.Parse(_s.Substring(Pos, 4), NumberStyles.HexNumber, CultureInfo.InvariantCulture));
                            Pos += 4;
                            break;
                        default: throw Error("bad escape \\" + e);
                    }
                }
            }
        }
    }

    /// <summary>Conversions the generated types use.</summary>
    public static class JsonConv
    {
        public static JsonNode Node(JsonNode j) { return j ?? JsonNode.Null; }
        public static string ToStr(JsonNode j) { return j == null ? null : j.AsString; }
        public static long ToLong(JsonNode j) { return j == null ? 0 : j.AsLong; }
        public static double ToDouble(JsonNode j) { return j == null ? 0 : j.AsDouble; }
        public static bool ToBool(JsonNode j) { return j != null && j.AsBool; }
        public static long? ToNullableLong(JsonNode j) { return j == null || j.Kind != JsonKind.Number ? (long?)null : j.AsLong; }
        public static double? ToNullableDouble(JsonNode j) { return j == null || j.Kind != JsonKind.Number ? (double?)null : j.AsDouble; }
        public static bool? ToNullableBool(JsonNode j) { return j == null || j.Kind != JsonKind.Bool ? (bool?)null : j.AsBool; }

        public static List<T> ToList<T>(JsonNode j, Func<JsonNode, T> item)
        {
            if (j == null || j.Kind != JsonKind.Array) return null;
            var l = new List<T>(j.Count);
            foreach (var x in j) l.Add(item(x));
            return l;
        }

        public static Dictionary<string, T> ToMap<T>(JsonNode j, Func<JsonNode, T> item)
        {
            if (j == null || j.Kind != JsonKind.Object) return null;
            var d = new Dictionary<string, T>();
            foreach (var k in j.Keys) d[k] = item(j[k]);
            return d;
        }

        public static JsonNode FromList<T>(List<T> l, Func<T, JsonNode> item)
        {
            if (l == null) return JsonNode.Null;
            var a = JsonNode.NewArray();
            foreach (var x in l) a.Add(item(x));
            return a;
        }

        public static JsonNode FromMap<T>(Dictionary<string, T> d, Func<T, JsonNode> item)
        {
            if (d == null) return JsonNode.Null;
            var o = JsonNode.NewObject();
            foreach (var kv in d) o[kv.Key] = item(kv.Value);
            return o;
        }
    }
}
