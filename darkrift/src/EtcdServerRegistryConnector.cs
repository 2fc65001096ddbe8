// DarkRift 2 server registry connector backed by darkrift-etcd's local agent (docs/agent-api.md).
//
// Server.config:
//   <serverRegistry advertisedHost="10.0.0.5" advertisedPort="4296">
//     <serverRegistryConnector type="EtcdServerRegistryConnector">
//       <settings agent="127.0.0.1:7600" />        <!-- or agentPath="…/darkrift-etcd" endpoints="…" -->
//     </serverRegistryConnector>
//   </serverRegistry>
//
// Threads: RegisterServer (DarkRift's main thread) registers and returns the id at once; a reader
// thread attaches the registration's event stream and keeps it attached (re-attach, resume, child
// restart); a delivery thread (MemberDelivery) calls HandleServerJoin/Leave, never before DarkRift
// has set ServerID. C# 6 only (Debian's mcs 6.8).

using System;
using System.Collections.Generic;
using System.Collections.Specialized;
using System.Globalization;
using System.IO;
using System.Net.Sockets;
using System.Reflection;
using System.Threading;
using DarkRift.Server;

namespace DarkRift.Etcd
{
    public class EtcdServerRegistryConnector : ServerRegistryConnector
    {
        public override bool ThreadSafe { get { return true; } }

        public override Version Version { get { return new Version(0, 1, 0); } }

        /// <summary>Exit code when the registration cannot continue (id taken, registration stopped): as the CLI's.</summary>
        public const int FatalExitCode = 5;

        private const int RequestTimeoutMs = 5000;
        private const int DeregisterTimeoutMs = 2000;
        private const int StreamReadTimeoutMs = 15000;   // three missed heartbeats
        private const int ChildStartTimeoutMs = 15000;

        // settings
        private readonly string agentSetting;
        private readonly string agentPath;
        private readonly List<string> childArgs = new List<string>();
        private readonly string readiness;
        private readonly string healthUrl;
        private readonly string[] watchGroups;
        private readonly long? ttlMs;
        private readonly int leaveGraceMs;
        private readonly int reattachMs;
        private readonly int registerTimeoutMs;
        private readonly bool hardenHealthCheck;
        private readonly Dictionary<string, string> extraProperties = new Dictionary<string, string>();

        // state
        private readonly object sync = new object();
        private AgentAddress agent;
        private ChildAgent child;
        private string handle;
        private ushort id;
        private Dictionary<string, object> registerRequest;
        private volatile bool registerReturned;
        private DateTime registerReturnedAt;
        private volatile bool stopping;
        private volatile bool fatal;
        private Thread readerThread;
        private AgentHttp stream;
        private MemberDelivery delivery;

        public EtcdServerRegistryConnector(ServerRegistryConnectorLoadData loadData) : base(loadData)
        {
            NameValueCollection s = loadData.Settings;
            agentSetting = s["agent"];
            agentPath = s["agentPath"];
            if (string.IsNullOrEmpty(agentSetting) == string.IsNullOrEmpty(agentPath))
                throw new ArgumentException("EtcdServerRegistryConnector: set exactly one of 'agent' (the address of a running agent) and 'agentPath' (the darkrift-etcd binary to start as a child).");
            if (!string.IsNullOrEmpty(agentSetting))
                agent = AgentAddress.Parse(agentSetting);   // fail at load, not at start
            else
            {
                childArgs.Add("agent");
                childArgs.Add("--listen");
                childArgs.Add(s["listen"] ?? "127.0.0.1:0");
                childArgs.Add("--exit-with-stdin");
                AddFlag(s, "endpoints", "--endpoints");
                AddFlag(s, "prefix", "--prefix");
                AddFlag(s, "tlsCa", "--ca-cert");
                AddFlag(s, "tlsCert", "--cert");
                AddFlag(s, "tlsKey", "--key");
                AddFlag(s, "user", "--user");
                AddFlag(s, "passwordFile", "--password-file");
                string extra = s["agentArgs"];
                if (!string.IsNullOrEmpty(extra))
                    childArgs.AddRange(extra.Split(new[] { ' ' }, StringSplitOptions.RemoveEmptyEntries));
            }

            readiness = (s["readiness"] ?? "probe").Trim();
            if (readiness != "probe" && readiness != "immediate")
                throw new ArgumentException("EtcdServerRegistryConnector: readiness must be 'probe' or 'immediate', not '" + readiness + "'.");
            healthUrl = string.IsNullOrEmpty(s["healthUrl"]) ? null : s["healthUrl"];
            if (!string.IsNullOrEmpty(s["watchGroups"]))
                watchGroups = s["watchGroups"].Split(new[] { ',' }, StringSplitOptions.RemoveEmptyEntries);
            if (!string.IsNullOrEmpty(s["ttl"]))
                ttlMs = ParseDurationMs(s["ttl"], "ttl");
            leaveGraceMs = (int)ParseDurationMs(s["leaveGraceMs"] ?? "300", "leaveGraceMs");
            reattachMs = (int)ParseDurationMs(s["reattachMs"] ?? "150", "reattachMs");
            registerTimeoutMs = (int)ParseDurationMs(s["registerTimeoutMs"] ?? "30000", "registerTimeoutMs");
            hardenHealthCheck = (s["hardenHealthCheck"] ?? "true").Trim().ToLowerInvariant() != "false";
            foreach (string key in s.AllKeys)
                if (key != null && key.StartsWith("property.", StringComparison.Ordinal))
                    extraProperties[key.Substring("property.".Length)] = s[key];
        }

        private void AddFlag(NameValueCollection s, string setting, string flag)
        {
            if (!string.IsNullOrEmpty(s[setting]))
            {
                childArgs.Add(flag);
                childArgs.Add(s[setting]);
            }
        }

        /// <summary>"300" (ms), "300ms", "10s", "1m" → milliseconds.</summary>
        private static long ParseDurationMs(string v, string name)
        {
            v = v.Trim();
            long mult = 1;
            if (v.EndsWith("ms", StringComparison.Ordinal)) v = v.Substring(0, v.Length - 2);
            else if (v.EndsWith("s", StringComparison.Ordinal)) { mult = 1000; v = v.Substring(0, v.Length - 1); }
            else if (v.EndsWith("m", StringComparison.Ordinal)) { mult = 60000; v = v.Substring(0, v.Length - 1); }
            long n;
            if (!long.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out n) || n < 0)
                throw new ArgumentException("EtcdServerRegistryConnector: setting '" + name + "' is not a duration (e.g. 300, 300ms, 10s).");
            return n * mult;
        }

        // ------------------------------------------------------------------ DarkRift's calls

        protected override ushort RegisterServer(string group, string host, ushort port, IDictionary<string, string> properties)
        {
            if (hardenHealthCheck)
                HardenHealthCheck();
            if (child == null && agentPath != null)
            {
                child = new ChildAgent(agentPath, childArgs, ForwardAgentLog);
                Logger.Trace("Starting the registry agent: " + child.CommandLine);
                child.Start(ChildStartTimeoutMs);
                agent = child.Address;
                Logger.Info("Registry agent started as a child process, listening on " + agent + ".");
            }

            Dictionary<string, object> req = new Dictionary<string, object>();
            req["group"] = group ?? "";
            req["host"] = host;
            req["port"] = (int)port;
            Dictionary<string, string> props = new Dictionary<string, string>(extraProperties);
            if (properties != null)
                foreach (KeyValuePair<string, string> kv in properties)
                    props[kv.Key] = kv.Value;
            req["properties"] = props;
            req["readiness"] = readiness;
            if (ttlMs.HasValue) req["ttl_ms"] = ttlMs.Value;
            if (healthUrl != null) req["health_url"] = healthUrl;
            if (watchGroups != null) req["watch_groups"] = watchGroups;
            registerRequest = req;

            // The agent may still be starting (sidecar) or etcd briefly unreachable (503): retry within registerTimeoutMs.
            DateTime deadline = DateTime.UtcNow.AddMilliseconds(registerTimeoutMs);
            int delay = 100;
            while (true)
            {
                string problem;
                try
                {
                    AgentResponse r = AgentHttp.Request(agent, "POST", "/v1/registrations", Jsonl.Serialize(req), RequestTimeoutMs + 10000);
                    if (r.Status == 201 || r.Status == 200)
                    {
                        Dictionary<string, object> j = r.Json;
                        long? gotId = Jsonl.Long(j, "id");
                        string gotHandle = Jsonl.Str(j, "handle");
                        if (!gotId.HasValue || gotId.Value < 0 || gotId.Value > ushort.MaxValue || string.IsNullOrEmpty(gotHandle))
                            throw new InvalidOperationException("the agent's register answer has no valid id and handle: " + r);
                        id = (ushort)gotId.Value;
                        handle = gotHandle;
                        Logger.Info("Registry agent " + agent + " gave id " + id + " (" + (Jsonl.Str(j, "state") ?? "?") + ", lease "
                            + (Jsonl.Str(j, "lease") ?? "?") + ")" + (readiness == "probe" ? "; peers are told once this server's listener accepts." : "."));
                        break;
                    }
                    if (r.Status != 503)
                        throw new InvalidOperationException("the registry agent at " + agent + " refused the registration: " + r);
                    problem = r.ToString();
                }
                catch (SocketException e) { problem = e.Message; }
                catch (TimeoutException e) { problem = e.Message; }
                catch (IOException e) { problem = e.Message; }
                if (DateTime.UtcNow.AddMilliseconds(delay) > deadline)
                {
                    StopChild();
                    throw new InvalidOperationException("could not register with the registry agent at " + agent + " within " + registerTimeoutMs + " ms: " + problem);
                }
                Logger.Warning("Registry agent at " + agent + " not ready (" + problem + "); retrying.");
                Thread.Sleep(delay);
                delay = Math.Min(delay * 2, 2000);
            }

            delivery = new MemberDelivery(leaveGraceMs, GateOpen, DeliverJoin, DeliverLeave,
                msg => Logger.Trace(msg), (msg, e) => Logger.Error(msg, e));
            delivery.Start();
            // Attach now: the agent drops a registration whose stream is not attached within its attach bound.
            readerThread = new Thread(ReaderLoop) { IsBackground = true, Name = "DarkRift.Etcd events" };
            readerThread.Start();

            registerReturnedAt = DateTime.UtcNow;
            registerReturned = true;
            return id;
        }

        protected override void DeregisterServer()
        {
            stopping = true;
            string h = handle;
            if (h != null && !fatal)
            {
                try
                {
                    AgentResponse r = AgentHttp.Request(agent, "DELETE", "/v1/registrations/" + h, null, DeregisterTimeoutMs);
                    if (r.Status == 204)
                        Logger.Info("Deregistered id " + id + " from the registry.");
                    else
                        Logger.Warning("The registry agent answered the deregistration with " + r + "; the lease expires by itself.");
                }
                catch (Exception e)
                {
                    Logger.Warning("Could not deregister id " + id + " within " + DeregisterTimeoutMs + " ms (" + e.Message + "); the agent deregisters when the stream closes, or the lease expires.");
                }
            }
            Shutdown();
        }

        protected override void HandleConnectionFailure(ushort peer)
        {
            string h = handle;
            if (h == null || stopping)
                return;
            try
            {
                AgentResponse r = AgentHttp.Request(agent, "POST", "/v1/registrations/" + h + "/unreachable",
                    Jsonl.Serialize(new Dictionary<string, object> { { "id", (int)peer } }), RequestTimeoutMs);
                Logger.Info("Reported server " + peer + " unreachable to the registry: " + (r.Status == 200 ? Jsonl.Str(r.Json, "status") : r.ToString()) + ".");
            }
            catch (Exception e)
            {
                Logger.Warning("Could not report server " + peer + " unreachable to the registry agent: " + e.Message);
            }
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                stopping = true;
                Shutdown();
            }
            base.Dispose(disposing);
        }

        private void Shutdown()
        {
            AgentHttp s = stream;
            if (s != null)
                s.Dispose();
            Thread t = readerThread;
            if (t != null && t != Thread.CurrentThread)
                t.Join(2000);
            if (delivery != null)
                delivery.Stop();
            StopChild();
        }

        private void StopChild()
        {
            ChildAgent c = child;
            if (c != null)
                c.Stop(2000);
        }

        // ------------------------------------------------------------------ delivery to DarkRift

        /// <summary>
        ///     True once DarkRift has the id: RegisterServer has returned and RemoteServerManager.ServerID
        ///     equals it (DarkRift assigns ServerID on the main thread right after RegisterServer
        ///     returns). For id 0 the check passes at once, which is harmless: ServerID is 0 before and after.
        /// </summary>
        private bool GateOpen()
        {
            if (!registerReturned)
                return false;
            if (RemoteServerManager.ServerID == id)
                return true;
            if ((DateTime.UtcNow - registerReturnedAt).TotalMilliseconds > 5000)
            {
                Logger.Warning("DarkRift's ServerID is still " + RemoteServerManager.ServerID + ", not " + id + ", 5 s after RegisterServer returned; delivering joins anyway.");
                registerReturnedAt = DateTime.MaxValue.AddDays(-1);
                return true;
            }
            return false;
        }

        private void DeliverJoin(Member m)
        {
            HandleServerJoin(m.Id, m.Group, m.Host, m.Port, m.Properties);
        }

        private void DeliverLeave(ushort peer)
        {
            HandleServerLeave(peer);
        }

        // ------------------------------------------------------------------ the event stream

        private void ReaderLoop()
        {
            bool needResume = false;
            DateTime droppedAt = DateTime.UtcNow;
            int delay = 0;
            while (!stopping)
            {
                try
                {
                    if (child != null && child.HasExited)
                    {
                        Logger.Warning("The registry agent child process died (" + child.ExitDescription + "); restarting it and resuming id " + id + ".");
                        child.Start(ChildStartTimeoutMs);
                        agent = child.Address;
                        needResume = true;
                    }
                    if (needResume)
                    {
                        if (!Resume())
                            goto retry;
                        needResume = false;
                    }
                    AgentHttp s = AgentHttp.Open(agent, "GET", "/v1/registrations/" + handle + "/events", null, RequestTimeoutMs);
                    try
                    {
                        stream = s;
                        if (s.Status == 404)
                        {
                            Logger.Warning("The registry agent no longer knows this registration (it restarted?); resuming id " + id + ".");
                            needResume = true;
                            delay = 0;
                            continue;
                        }
                        if (s.Status != 200)
                        {
                            AgentResponse r = new AgentResponse { Status = s.Status, Body = "" };
                            Logger.Warning("The registry agent refused the event stream: " + r + ".");
                            goto retry;
                        }
                        s.ReadTimeoutMs = StreamReadTimeoutMs;
                        delay = 0;
                        delivery.SnapshotBegin();
                        string line;
                        while (!stopping && (line = s.ReadBodyLine()) != null)
                        {
                            if (line.Length > 0)
                                HandleLine(line);
                        }
                        if (!stopping)
                            Logger.Warning("The registry agent ended the event stream; re-attaching.");
                    }
                    finally
                    {
                        if (s.Status == 200)
                            droppedAt = DateTime.UtcNow;
                        stream = null;
                        s.Dispose();
                    }
                    continue;
                }
                catch (Exception e)
                {
                    if (stopping)
                        return;
                    StreamWarning("Registry event stream: " + e.Message + (needResume ? "" : "; re-attaching."));
                }
            retry:
                if (stopping)
                    return;
                // Within the agent's reattach window retry almost at once, then back off up to 1 s.
                if ((DateTime.UtcNow - droppedAt).TotalMilliseconds < reattachMs)
                    Thread.Sleep(10);
                else
                {
                    delay = delay == 0 ? 50 : Math.Min(delay * 2, 1000);
                    Thread.Sleep(delay);
                }
            }
        }

        private DateTime lastStreamWarning = DateTime.MinValue;

        /// <summary>Retries run every 10 ms to 1 s: one Warning per 5 s, the rest at Trace.</summary>
        private void StreamWarning(string message)
        {
            if ((DateTime.UtcNow - lastStreamWarning).TotalMilliseconds >= 5000)
            {
                lastStreamWarning = DateTime.UtcNow;
                Logger.Warning(message);
            }
            else
                Logger.Trace(message);
        }

        /// <summary>Re-sends the register request with resume {id, handle}. False: retry later.</summary>
        private bool Resume()
        {
            Dictionary<string, object> req = new Dictionary<string, object>(registerRequest);
            req["resume"] = new Dictionary<string, object> { { "id", (int)id }, { "handle", handle } };
            AgentResponse r;
            try
            {
                r = AgentHttp.Request(agent, "POST", "/v1/registrations", Jsonl.Serialize(req), RequestTimeoutMs + 10000);
            }
            catch (Exception e)
            {
                StreamWarning("Resuming id " + id + " with the registry agent at " + agent + " failed (" + e.Message + "); retrying.");
                return false;
            }
            if (r.Status == 201 || r.Status == 200)
            {
                long? gotId = Jsonl.Long(r.Json, "id");
                string gotHandle = Jsonl.Str(r.Json, "handle");
                if (gotId != id)
                {
                    Fatal("The registry agent resumed this server under id " + gotId + " instead of " + id + "; DarkRift cannot change its id while running.");
                    return false;
                }
                if (!string.IsNullOrEmpty(gotHandle))
                    handle = gotHandle;
                Logger.Info("Resumed id " + id + " with the registry agent at " + agent + " (" + (Jsonl.Str(r.Json, "state") ?? "?") + ").");
                return true;
            }
            if (r.Status == 409 && r.ErrorCode == "id_taken")
            {
                Fatal("Id " + id + " is now held by another server (" + (Jsonl.Str(r.Json, "message") ?? r.ToString()) + "); this server cannot keep running under an id another server holds.");
                return false;
            }
            if (r.Status >= 400 && r.Status < 500 && r.Status != 408 && r.Status != 429)
            {
                Fatal("The registry agent refused to resume id " + id + ": " + r + ".");
                return false;
            }
            Logger.Warning("Resuming id " + id + ": the registry agent answered " + r + "; retrying.");
            return false;
        }

        private void HandleLine(string line)
        {
            Dictionary<string, object> e;
            try { e = Jsonl.ParseObject(line); }
            catch (Exception ex)
            {
                Logger.Warning("Ignoring a malformed event line from the registry agent: " + line, ex);
                return;
            }
            string ev = Jsonl.Str(e, "event");
            long? eid = Jsonl.Long(e, "id");
            switch (ev)
            {
                case "heartbeat":
                    break;
                case "join":
                    {
                        long? port = Jsonl.Long(e, "port");
                        if (!eid.HasValue || eid.Value < 0 || eid.Value > ushort.MaxValue || !port.HasValue || port.Value <= 0 || port.Value > ushort.MaxValue)
                        {
                            Logger.Warning("Ignoring a join without a valid id and port: " + line);
                            break;
                        }
                        if (eid.Value == id)
                            break; // ourselves: DarkRift drops it anyway
                        delivery.Join(new Member
                        {
                            Id = (ushort)eid.Value,
                            Group = Jsonl.Str(e, "group") ?? "",
                            Host = Jsonl.Str(e, "host"),
                            Port = (ushort)port.Value,
                            Properties = Jsonl.StrMap(e, "properties"),
                        });
                        break;
                    }
                case "leave":
                    if (eid.HasValue && eid.Value >= 0 && eid.Value <= ushort.MaxValue && eid.Value != id)
                        delivery.Leave((ushort)eid.Value);
                    break;
                case "synced":
                    delivery.Synced();
                    Logger.Trace("Registry view synced (" + (Jsonl.Str(e, "members") ?? "?") + " members, revision " + Jsonl.Str(e, "revision") + ").");
                    break;
                case "reserved":
                    Logger.Trace("Registry: id " + eid + " reserved; peers are told once the listener accepts.");
                    break;
                case "registered":
                    Logger.Info("Registry: id " + eid + " announced to the cluster.");
                    break;
                case "stale":
                    Logger.Warning("Registry: etcd cannot be read; the view is stale at revision " + Jsonl.Str(e, "revision") + ".");
                    break;
                case "fresh":
                    Logger.Info("Registry: the view is fresh again at revision " + Jsonl.Str(e, "revision") + ".");
                    break;
                case "lease_lost":
                    Logger.Warning("Registry: the lease of id " + eid + " was lost (" + Jsonl.Str(e, "reason") + ").");
                    break;
                case "reregistered":
                    if (eid.HasValue && eid.Value != id)
                        Fatal("The registry re-registered this server under id " + eid + " (was " + id + "); DarkRift cannot change its id while running.");
                    else
                        Logger.Warning("Registry: id " + id + " registered again after its lease was lost (peers saw a leave and a join).");
                    break;
                case "registration_stopped":
                case "stopped":
                    if (!stopping)
                        Fatal("The registry stopped this server's registration (id " + id + "): " + (Jsonl.Str(e, "reason") ?? "no reason given") + ".");
                    break;
                default:
                    Logger.Trace("Registry event: " + line);
                    break;
            }
        }

        /// <summary>
        ///     DarkRift's HttpHealthCheck (DarkRift.Server/Plugins/HealthCheck/HttpHealthcheck.cs, Listen(),
        ///     lines 119-123) writes its answer outside any try: if the prober has closed the connection
        ///     (gave up during a stall, or died), the write throws on the listener thread and the process
        ///     exits. HttpListener.IgnoreWriteExceptions makes those writes silent. The listener is a private
        ///     field of an internal plugin: reached by reflection, best effort, logged either way.
        /// </summary>
        private void HardenHealthCheck()
        {
            try
            {
                FieldInfo sf = typeof(ServerRegistryConnector).GetField("server", BindingFlags.Instance | BindingFlags.NonPublic);
                object server = sf == null ? null : sf.GetValue(this);
                PropertyInfo pmp = server == null ? null : server.GetType().GetProperty("InternalPluginManager", BindingFlags.Instance | BindingFlags.NonPublic | BindingFlags.Public);
                object pm = pmp == null ? null : pmp.GetValue(server, null);
                MethodInfo all = pm == null ? null : pm.GetType().GetMethod("ActuallyGetAllPlugins", BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic);
                System.Collections.IEnumerable plugins = all == null ? null : all.Invoke(pm, null) as System.Collections.IEnumerable;
                if (plugins == null)
                {
                    Logger.Trace("Could not reach DarkRift's plugin list to harden HttpHealthCheck (DarkRift's internals differ from 2.11.0).");
                    return;
                }
                foreach (object plugin in plugins)
                {
                    if (plugin == null || plugin.GetType().Name != "HttpHealthCheck")
                        continue;
                    FieldInfo lf = plugin.GetType().GetField("httpListener", BindingFlags.Instance | BindingFlags.NonPublic);
                    System.Net.HttpListener listener = lf == null ? null : lf.GetValue(plugin) as System.Net.HttpListener;
                    if (listener == null)
                    {
                        Logger.Trace("HttpHealthCheck has no httpListener field; not hardened.");
                        return;
                    }
                    listener.IgnoreWriteExceptions = true;
                    Logger.Trace("HttpHealthCheck hardened: a late answer to a probe its client abandoned no longer ends the process (HttpListener.IgnoreWriteExceptions).");
                    return;
                }
            }
            catch (Exception e)
            {
                Logger.Trace("Could not harden HttpHealthCheck: " + e.Message);
            }
        }

        // ------------------------------------------------------------------ fatal stop

        /// <summary>
        ///     Logs a fatal message and stops this process: DarkRift cannot change ServerID at run time,
        ///     and running on under an id another server holds corrupts the cluster. The server is
        ///     disposed first (bounded, 3 s: listeners closed, logs flushed; our DeregisterServer is then
        ///     a no-op), then Environment.Exit(5). DarkRift's own Dispose alone would not end the stock
        ///     console, whose console thread is a foreground thread blocked on stdin.
        /// </summary>
        private void Fatal(string message)
        {
            lock (sync)
            {
                if (fatal)
                    return;
                fatal = true;
                stopping = true;
            }
            Logger.Fatal(message + " Stopping the server (exit code " + FatalExitCode + ").");
            Thread t = new Thread(() =>
            {
                try
                {
                    FieldInfo f = typeof(ServerRegistryConnector).GetField("server", BindingFlags.Instance | BindingFlags.NonPublic);
                    IDisposable server = f == null ? null : f.GetValue(this) as IDisposable;
                    if (server != null)
                    {
                        Thread d = new Thread(() => { try { server.Dispose(); } catch (Exception) { } }) { IsBackground = true };
                        d.Start();
                        d.Join(3000);
                    }
                }
                catch (Exception) { }
                StopChild();
                Environment.Exit(FatalExitCode);
            }) { IsBackground = true, Name = "DarkRift.Etcd fatal stop" };
            t.Start();
        }

        private void ForwardAgentLog(string line)
        {
            // The agent's text log lines carry their level ("… WARN …", "… ERROR …").
            if (line.IndexOf(" ERROR ", StringComparison.Ordinal) >= 0 || line.IndexOf("\"level\":\"ERROR\"", StringComparison.Ordinal) >= 0)
                Logger.Error("agent: " + line);
            else if (line.IndexOf(" WARN ", StringComparison.Ordinal) >= 0 || line.IndexOf("\"level\":\"WARN\"", StringComparison.Ordinal) >= 0)
                Logger.Warning("agent: " + line);
            else if (line.IndexOf(" DEBUG ", StringComparison.Ordinal) >= 0 || line.IndexOf(" TRACE ", StringComparison.Ordinal) >= 0)
                Logger.Trace("agent: " + line);
            else
                Logger.Info("agent: " + line);
        }
    }
}
