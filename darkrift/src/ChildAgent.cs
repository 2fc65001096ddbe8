// The child-process mode: the plugin starts `darkrift-etcd agent --listen 127.0.0.1:0
// --exit-with-stdin …`, reads the one JSON line the agent prints once it accepts connections,
// keeps the write end of the agent's stdin open (when this process dies, for any reason, the pipe
// closes and the agent deregisters and exits) and forwards the agent's stderr to DarkRift's log.
// C# 6 only (Debian's mcs 6.8).

using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Text;
using System.Threading;

namespace DarkRift.Etcd
{
    internal sealed class ChildAgent : IDisposable
    {
        private readonly string path;
        private readonly List<string> args;
        private readonly Action<string> logLine;
        private Process process;

        public AgentAddress Address { get; private set; }

        /// <param name="logLine">Receives each line the agent writes on stderr.</param>
        public ChildAgent(string path, List<string> args, Action<string> logLine)
        {
            this.path = path;
            this.args = args;
            this.logLine = logLine;
        }

        public bool HasExited
        {
            get
            {
                try { return process == null || process.HasExited; }
                catch (Exception) { return true; }
            }
        }

        public string ExitDescription
        {
            get
            {
                try { return process != null && process.HasExited ? "exit code " + process.ExitCode : "running"; }
                catch (Exception) { return "unknown"; }
            }
        }

        public string CommandLine { get { return path + " " + JoinArgs(args); } }

        /// <summary>Starts the agent and waits (at most timeoutMs) for its "listening" line.</summary>
        public void Start(int timeoutMs)
        {
            Stop(0);
            ProcessStartInfo psi = new ProcessStartInfo(path, JoinArgs(args))
            {
                UseShellExecute = false,
                RedirectStandardInput = true,
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                CreateNoWindow = true,
                StandardOutputEncoding = Encoding.UTF8,
                StandardErrorEncoding = Encoding.UTF8,
            };
            Process p = new Process { StartInfo = psi };
            p.ErrorDataReceived += (sender, e) =>
            {
                if (e.Data != null)
                    logLine(e.Data);
            };
            p.Start();
            p.BeginErrorReadLine();
            process = p;

            string first = null;
            Exception readError = null;
            Thread reader = new Thread(() =>
            {
                try { first = p.StandardOutput.ReadLine(); }
                catch (Exception e) { readError = e; }
            }) { IsBackground = true, Name = "DarkRift.Etcd agent stdout" };
            reader.Start();
            if (!reader.Join(timeoutMs))
            {
                Stop(0);
                throw new TimeoutException("the agent (" + CommandLine + ") printed no 'listening' line within " + timeoutMs + " ms");
            }
            if (first == null)
            {
                p.WaitForExit(1000);
                string why = ExitDescription;
                Stop(0);
                throw new InvalidOperationException("the agent (" + CommandLine + ") ended its stdout without a 'listening' line (" + why + ")"
                    + (readError != null ? ": " + readError.Message : "; see its stderr above"));
            }
            Dictionary<string, object> line = Jsonl.ParseObject(first);
            string addr = Jsonl.Str(line, "addr");
            if (Jsonl.Str(line, "event") != "listening" || addr == null)
            {
                Stop(0);
                throw new InvalidOperationException("the agent's first stdout line is not {\"v\":1,\"event\":\"listening\",\"addr\":…}: " + first);
            }
            Address = AgentAddress.Parse(addr);

            // Nothing else is printed on stdout by contract; drain it anyway so the pipe never fills.
            Thread drain = new Thread(() =>
            {
                try
                {
                    string l;
                    while ((l = p.StandardOutput.ReadLine()) != null)
                        logLine("(stdout) " + l);
                }
                catch (Exception) { }
            }) { IsBackground = true, Name = "DarkRift.Etcd agent stdout drain" };
            drain.Start();
        }

        /// <summary>Closes the agent's stdin (it deregisters what is left and exits), waits, then kills.</summary>
        public void Stop(int waitMs)
        {
            Process p = process;
            process = null;
            if (p == null)
                return;
            try { p.StandardInput.Close(); } catch (Exception) { }
            try
            {
                if (!p.WaitForExit(waitMs))
                    p.Kill();
            }
            catch (Exception) { }
            try { p.Dispose(); } catch (Exception) { }
        }

        public void Dispose() { Stop(2000); }

        private static string JoinArgs(List<string> args)
        {
            StringBuilder sb = new StringBuilder();
            foreach (string a in args)
            {
                if (sb.Length > 0)
                    sb.Append(' ');
                if (a.Length > 0 && a.IndexOfAny(new[] { ' ', '\t', '"', '\'', '\\' }) < 0)
                    sb.Append(a);
                else
                    sb.Append('"').Append(a.Replace("\\", "\\\\").Replace("\"", "\\\"")).Append('"');
            }
            return sb.ToString();
        }
    }
}
