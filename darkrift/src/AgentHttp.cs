// A minimal HTTP/1.1 client for the agent's local API (docs/agent-api.md), over TCP or a Unix
// socket. Hand-rolled on System.Net.Sockets because mono's HttpWebRequest cannot speak to a Unix
// socket and because the event stream must be read line by line as the chunks arrive.
// One connection per request ("Connection: close"): the API is local and requests are rare.
// C# 6 only (Debian's mcs 6.8).

using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Web.Script.Serialization;

namespace DarkRift.Etcd
{
    /// <summary>An AF_UNIX endpoint (what Mono.Posix's UnixEndPoint does, without the dependency).</summary>
    internal sealed class UnixSocketEndPoint : EndPoint
    {
        public string Path { get; private set; }

        public UnixSocketEndPoint(string path) { Path = path; }

        public override AddressFamily AddressFamily { get { return AddressFamily.Unix; } }

        public override SocketAddress Serialize()
        {
            byte[] bytes = Encoding.UTF8.GetBytes(Path);
            SocketAddress sa = new SocketAddress(AddressFamily.Unix, 2 + bytes.Length + 1);
            for (int i = 0; i < bytes.Length; i++)
                sa[2 + i] = bytes[i];
            sa[2 + bytes.Length] = 0;
            return sa;
        }

        public override EndPoint Create(SocketAddress socketAddress)
        {
            int n = 0;
            while (2 + n < socketAddress.Size && socketAddress[2 + n] != 0)
                n++;
            byte[] bytes = new byte[n];
            for (int i = 0; i < n; i++)
                bytes[i] = socketAddress[2 + i];
            return new UnixSocketEndPoint(Encoding.UTF8.GetString(bytes));
        }

        public override string ToString() { return "unix:" + Path; }
    }

    /// <summary>Where the agent listens: "127.0.0.1:7600", "[::1]:7600" or "unix:/path.sock".</summary>
    internal sealed class AgentAddress
    {
        public string UnixPath { get; private set; }
        public IPEndPoint Tcp { get; private set; }

        public static AgentAddress Parse(string s)
        {
            if (string.IsNullOrEmpty(s))
                throw new FormatException("empty agent address");
            s = s.Trim();
            if (s.StartsWith("unix:", StringComparison.Ordinal))
                return new AgentAddress { UnixPath = s.Substring(5) };
            if (s.StartsWith("http://", StringComparison.Ordinal))
                s = s.Substring(7).TrimEnd('/');
            int colon = s.LastIndexOf(':');
            if (colon <= 0)
                throw new FormatException("agent address '" + s + "' is not HOST:PORT or unix:PATH");
            string host = s.Substring(0, colon).Trim('[', ']');
            int port = int.Parse(s.Substring(colon + 1), CultureInfo.InvariantCulture);
            IPAddress ip;
            if (!IPAddress.TryParse(host, out ip))
            {
                if (host == "localhost")
                    ip = IPAddress.Loopback;
                else
                    throw new FormatException("agent host '" + host + "' must be an IP address (the agent listens on loopback)");
            }
            return new AgentAddress { Tcp = new IPEndPoint(ip, port) };
        }

        public Socket Connect(int timeoutMs)
        {
            Socket socket;
            EndPoint ep;
            if (UnixPath != null)
            {
                socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                ep = new UnixSocketEndPoint(UnixPath);
            }
            else
            {
                socket = new Socket(Tcp.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
                socket.NoDelay = true;
                ep = Tcp;
            }
            try
            {
                IAsyncResult ar = socket.BeginConnect(ep, null, null);
                if (!ar.AsyncWaitHandle.WaitOne(timeoutMs))
                    throw new TimeoutException("connecting to the agent at " + this + " took more than " + timeoutMs + " ms");
                socket.EndConnect(ar);
                return socket;
            }
            catch
            {
                socket.Close();
                throw;
            }
        }

        public override string ToString() { return UnixPath != null ? "unix:" + UnixPath : Tcp.ToString(); }
    }

    /// <summary>An HTTP answer with its body read whole.</summary>
    internal sealed class AgentResponse
    {
        public int Status;
        public string Body;

        /// <summary>The body as a JSON object, or null if it is not one.</summary>
        public Dictionary<string, object> Json
        {
            get
            {
                try { return Jsonl.ParseObject(Body); }
                catch (Exception) { return null; }
            }
        }

        /// <summary>The API's error code ("id_taken", "not_found", …) or null.</summary>
        public string ErrorCode { get { return Jsonl.Str(Json, "error"); } }

        public override string ToString() { return Status + " " + (Body ?? "").Trim(); }
    }

    /// <summary>JSON helpers over the framework's JavaScriptSerializer (System.Web.Extensions).</summary>
    internal static class Jsonl
    {
        private static readonly JavaScriptSerializer serializer = new JavaScriptSerializer { MaxJsonLength = 1 << 20 };

        public static Dictionary<string, object> ParseObject(string s)
        {
            if (string.IsNullOrEmpty(s))
                return null;
            lock (serializer)
                return serializer.DeserializeObject(s) as Dictionary<string, object>;
        }

        public static string Serialize(object o)
        {
            lock (serializer)
                return serializer.Serialize(o);
        }

        public static string Str(Dictionary<string, object> o, string key)
        {
            object v;
            if (o == null || !o.TryGetValue(key, out v) || v == null)
                return null;
            return Convert.ToString(v, CultureInfo.InvariantCulture);
        }

        public static long? Long(Dictionary<string, object> o, string key)
        {
            object v;
            if (o == null || !o.TryGetValue(key, out v) || v == null)
                return null;
            if (v is int) return (int)v;
            if (v is long) return (long)v;
            if (v is decimal) return (long)(decimal)v;
            if (v is double) return (long)(double)v;
            long l;
            if (long.TryParse(Convert.ToString(v, CultureInfo.InvariantCulture), NumberStyles.Integer, CultureInfo.InvariantCulture, out l))
                return l;
            return null;
        }

        public static Dictionary<string, string> StrMap(Dictionary<string, object> o, string key)
        {
            Dictionary<string, string> result = new Dictionary<string, string>();
            object v;
            if (o == null || !o.TryGetValue(key, out v))
                return result;
            Dictionary<string, object> m = v as Dictionary<string, object>;
            if (m == null)
                return result;
            foreach (KeyValuePair<string, object> kv in m)
                result[kv.Key] = kv.Value == null ? null : Convert.ToString(kv.Value, CultureInfo.InvariantCulture);
            return result;
        }
    }

    /// <summary>One HTTP/1.1 exchange on its own connection; for the event stream, kept open and read line by line.</summary>
    internal sealed class AgentHttp : IDisposable
    {
        private readonly Socket socket;
        private readonly byte[] buffer = new byte[16384];
        private int pos, len;
        private bool chunked;
        private long bodyLeft = -1;     // Content-Length framing: bytes left; -1 = read to close
        private long chunkLeft;         // chunked framing: bytes left in the current chunk
        private bool bodyDone;

        public int Status { get; private set; }
        public Dictionary<string, string> Headers { get; private set; }

        private AgentHttp(Socket socket) { this.socket = socket; }

        /// <summary>Sends a request and reads the status line and headers, bounded by timeoutMs (each of connect, send and every read).</summary>
        public static AgentHttp Open(AgentAddress address, string method, string path, string jsonBody, int timeoutMs)
        {
            Socket s = address.Connect(timeoutMs);
            AgentHttp h = new AgentHttp(s);
            try
            {
                s.SendTimeout = timeoutMs;
                s.ReceiveTimeout = timeoutMs;
                byte[] body = jsonBody == null ? new byte[0] : Encoding.UTF8.GetBytes(jsonBody);
                StringBuilder sb = new StringBuilder();
                sb.Append(method).Append(' ').Append(path).Append(" HTTP/1.1\r\n");
                sb.Append("Host: darkrift-etcd-agent\r\n");
                sb.Append("User-Agent: DarkRift.Etcd/1\r\n");
                sb.Append("Connection: close\r\n");
                if (jsonBody != null)
                    sb.Append("Content-Type: application/json\r\n");
                if (jsonBody != null || method == "POST" || method == "PUT")
                    sb.Append("Content-Length: ").Append(body.Length.ToString(CultureInfo.InvariantCulture)).Append("\r\n");
                sb.Append("\r\n");
                byte[] head = Encoding.ASCII.GetBytes(sb.ToString());
                byte[] all = new byte[head.Length + body.Length];
                Buffer.BlockCopy(head, 0, all, 0, head.Length);
                Buffer.BlockCopy(body, 0, all, head.Length, body.Length);
                int sent = 0;
                while (sent < all.Length)
                    sent += s.Send(all, sent, all.Length - sent, SocketFlags.None);
                h.ReadHead();
                return h;
            }
            catch
            {
                h.Dispose();
                throw;
            }
        }

        /// <summary>A whole request: send, read the answer's body whole, close.</summary>
        public static AgentResponse Request(AgentAddress address, string method, string path, string jsonBody, int timeoutMs)
        {
            using (AgentHttp h = Open(address, method, path, jsonBody, timeoutMs))
            {
                MemoryStream ms = new MemoryStream();
                byte[] tmp = new byte[4096];
                int n;
                while ((n = h.ReadBody(tmp, 0, tmp.Length)) > 0)
                {
                    ms.Write(tmp, 0, n);
                    if (ms.Length > (1 << 20))
                        throw new IOException("agent answer larger than 1 MiB");
                }
                return new AgentResponse { Status = h.Status, Body = Encoding.UTF8.GetString(ms.ToArray()) };
            }
        }

        /// <summary>Sets the bound on every later read (the event stream uses a longer one than the request).</summary>
        public int ReadTimeoutMs { set { socket.ReceiveTimeout = value; } }

        /// <summary>The next line of the body (without its newline), or null at the end of the body.</summary>
        public string ReadBodyLine()
        {
            MemoryStream line = new MemoryStream();
            byte[] one = new byte[1];
            while (true)
            {
                int n = ReadBody(one, 0, 1);
                if (n == 0)
                    return line.Length > 0 ? Encoding.UTF8.GetString(line.ToArray()) : null;
                if (one[0] == (byte)'\n')
                    return Encoding.UTF8.GetString(line.ToArray()).TrimEnd('\r');
                line.WriteByte(one[0]);
                if (line.Length > (1 << 20))
                    throw new IOException("event line longer than 1 MiB");
            }
        }

        /// <summary>Closes the connection (from any thread: a blocked read then throws).</summary>
        public void Dispose()
        {
            try { socket.Shutdown(SocketShutdown.Both); } catch (Exception) { }
            try { socket.Close(); } catch (Exception) { }
        }

        private void ReadHead()
        {
            string statusLine = ReadRawLine();
            if (statusLine == null)
                throw new IOException("the agent closed the connection without answering");
            string[] parts = statusLine.Split(new[] { ' ' }, 3);
            int status;
            if (parts.Length < 2 || !parts[0].StartsWith("HTTP/1.", StringComparison.Ordinal) || !int.TryParse(parts[1], out status))
                throw new IOException("malformed HTTP status line from the agent: " + statusLine);
            Status = status;
            Headers = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
            string line;
            while (!string.IsNullOrEmpty(line = ReadRawLine()))
            {
                int colon = line.IndexOf(':');
                if (colon > 0)
                    Headers[line.Substring(0, colon).Trim()] = line.Substring(colon + 1).Trim();
            }
            if (line == null)
                throw new IOException("the agent closed the connection inside the HTTP header");
            string te, cl;
            if (Headers.TryGetValue("Transfer-Encoding", out te) && te.IndexOf("chunked", StringComparison.OrdinalIgnoreCase) >= 0)
                chunked = true;
            else if (Headers.TryGetValue("Content-Length", out cl))
                bodyLeft = long.Parse(cl, CultureInfo.InvariantCulture);
            if (status == 204 || status == 304 || (status >= 100 && status < 200))
                bodyDone = true;
        }

        private int ReadBody(byte[] dst, int off, int count)
        {
            if (bodyDone)
                return 0;
            if (chunked)
            {
                if (chunkLeft == 0)
                {
                    string sizeLine = ReadRawLine();
                    if (sizeLine == null)
                        throw new IOException("the agent closed the connection inside a chunked body");
                    int semi = sizeLine.IndexOf(';');
                    if (semi >= 0)
                        sizeLine = sizeLine.Substring(0, semi);
                    chunkLeft = long.Parse(sizeLine.Trim(), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
                    if (chunkLeft == 0)
                    {
                        while (!string.IsNullOrEmpty(ReadRawLine())) { }
                        bodyDone = true;
                        return 0;
                    }
                }
                int n = ReadRaw(dst, off, (int)Math.Min(count, chunkLeft));
                if (n == 0)
                    throw new IOException("the agent closed the connection inside a chunk");
                chunkLeft -= n;
                if (chunkLeft == 0)
                    ReadRawLine(); // the CRLF after the chunk's data
                return n;
            }
            if (bodyLeft == 0)
            {
                bodyDone = true;
                return 0;
            }
            int want = bodyLeft < 0 ? count : (int)Math.Min(count, bodyLeft);
            int got = ReadRaw(dst, off, want);
            if (got == 0)
            {
                if (bodyLeft > 0)
                    throw new IOException("the agent closed the connection " + bodyLeft + " bytes before the end of its answer");
                bodyDone = true;
                return 0;
            }
            if (bodyLeft > 0)
                bodyLeft -= got;
            return got;
        }

        private bool Fill()
        {
            if (pos < len)
                return true;
            pos = 0;
            len = socket.Receive(buffer, 0, buffer.Length, SocketFlags.None);
            return len > 0;
        }

        private int ReadRaw(byte[] dst, int off, int count)
        {
            if (!Fill())
                return 0;
            int n = Math.Min(count, len - pos);
            Buffer.BlockCopy(buffer, pos, dst, off, n);
            pos += n;
            return n;
        }

        private string ReadRawLine()
        {
            StringBuilder sb = new StringBuilder();
            while (true)
            {
                if (!Fill())
                    return sb.Length > 0 ? sb.ToString() : null;
                byte b = buffer[pos++];
                if (b == (byte)'\n')
                    return sb.ToString().TrimEnd('\r');
                sb.Append((char)b);
                if (sb.Length > 16384)
                    throw new IOException("HTTP header line longer than 16 KiB");
            }
        }
    }
}
