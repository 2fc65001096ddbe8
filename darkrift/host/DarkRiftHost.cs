// DarkRiftHost: the stock DarkRift.Server.Console's start-up (Server.config [Cluster.config],
// -name=value variables, environment variables), plus what the stock console lacks:
//   - SIGTERM / SIGINT dispose the server (so the registry connector's DeregisterServer runs),
//     then the process exits 0;
//   - one line on stdout once the listeners are up:  DarkRiftHost: listening, server id N
//     and one when it has been disposed:              DarkRiftHost: stopped
// Defines $(hostDir) (this executable's folder) unless given.
// The console command loop runs on a background thread (a closed stdin does not stop the server,
// and never keeps the process alive after a signal).
// usage: mono DarkRiftHost.exe [Server.config [Cluster.config]] [-name=value ...]
// C# 6 only (Debian's mcs 6.8).

using System;
using System.Collections;
using System.Collections.Specialized;
using System.IO;
using System.Threading;
using DarkRift.Server;
using DarkRift.Server.Configuration;
using Mono.Unix;
using Mono.Unix.Native;

namespace DarkRift.Etcd.Host
{
    internal static class Program
    {
        private static DarkRiftServer server;
        private static readonly ManualResetEvent stopRequested = new ManualResetEvent(false);
        private static volatile string stopReason;

        private static int Main(string[] args)
        {
            string[] raw = CommandEngine.ParseArguments(string.Join(" ", args));
            string[] arguments = CommandEngine.GetArguments(raw);
            NameValueCollection variables = CommandEngine.GetFlags(raw);
            foreach (DictionaryEntry env in Environment.GetEnvironmentVariables())
                variables.Add((string)env.Key, (string)env.Value);
            // $(hostDir): this executable's folder (the configs find Plugins/ there).
            if (variables["hostDir"] == null)
                variables.Add("hostDir", Path.GetDirectoryName(Path.GetFullPath(typeof(Program).Assembly.Location)));

            string serverConfigFile = arguments.Length > 0 ? arguments[0] : "Server.config";
            string clusterConfigFile = arguments.Length > 1 ? arguments[1] : "Cluster.config";
            if (arguments.Length > 2)
            {
                Console.Error.WriteLine("usage: DarkRiftHost.exe [Server.config [Cluster.config]] [-name=value ...]");
                return 2;
            }

            try
            {
                DarkRiftServerConfigurationBuilder serverConfig = DarkRiftServerConfigurationBuilder.CreateFromXml(serverConfigFile, variables);
                serverConfig.WithDispatcherExecutorThreadID(Thread.CurrentThread.ManagedThreadId);
                if (File.Exists(clusterConfigFile))
                {
                    DarkRiftClusterConfigurationBuilder clusterConfig = DarkRiftClusterConfigurationBuilder.CreateFromXml(clusterConfigFile, variables);
                    server = new DarkRiftServer(serverConfig.ServerSpawnData, clusterConfig.ClusterSpawnData);
                }
                else
                {
                    server = new DarkRiftServer(serverConfig.ServerSpawnData);
                }
            }
            catch (XmlConfigurationException e)
            {
                Console.Error.WriteLine("DarkRiftHost: bad configuration: " + e.Message
                    + (e.LineInfo != null && e.LineInfo.HasLineInfo() ? " (line " + e.LineInfo.LineNumber + ", column " + e.LineInfo.LinePosition + ")" : ""));
                return 2;
            }
            catch (Exception e)
            {
                Console.Error.WriteLine("DarkRiftHost: could not create the server: " + e);
                return 2;
            }

            Thread signals = new Thread(WaitForSignals) { IsBackground = true, Name = "DarkRiftHost signals" };
            signals.Start();

            try
            {
                server.StartServer();
            }
            catch (Exception e)
            {
                // DarkRift has logged it (Fatal). Dispose what was set up (plugins, child agent).
                Console.Error.WriteLine("DarkRiftHost: the server could not start: " + e.Message);
                try { server.Dispose(); } catch (Exception) { }
                return 1;
            }

            Console.WriteLine("DarkRiftHost: listening, server id " + server.RemoteServerManager.ServerID);
            Console.Out.Flush();

            new Thread(ConsoleLoop) { IsBackground = true, Name = "DarkRiftHost console" }.Start();

            WaitHandle[] handles = { server.DispatcherWaitHandle, stopRequested };
            while (!server.Disposed)
            {
                int which = WaitHandle.WaitAny(handles);
                if (which == 1)
                    break;
                server.ExecuteDispatcherTasks();
            }

            Console.WriteLine("DarkRiftHost: " + (stopReason ?? "stop requested") + ", disposing the server");
            Console.Out.Flush();
            if (!server.Disposed)
                server.Dispose();
            Console.WriteLine("DarkRiftHost: stopped");
            Console.Out.Flush();
            return 0;
        }

        private static void WaitForSignals()
        {
            UnixSignal[] signals = { new UnixSignal(Signum.SIGTERM), new UnixSignal(Signum.SIGINT) };
            int which = UnixSignal.WaitAny(signals, -1);
            stopReason = (which == 0 ? "SIGTERM" : "SIGINT") + " received";
            stopRequested.Set();
        }

        private static void ConsoleLoop()
        {
            while (!server.Disposed)
            {
                string input = Console.ReadLine();
                if (input == null)
                    return;
                if (input.Trim() == "exit" || input.Trim() == "stop")
                {
                    stopReason = "'" + input.Trim() + "' typed";
                    stopRequested.Set();
                    return;
                }
                server.ExecuteCommand(input);
            }
        }
    }
}
