// Turns the agent's join/leave stream into HandleServerJoin/HandleServerLeave calls that DarkRift
// can take: one thread delivers them all, in order, and
//   - nothing before the gate opens (RegisterServer returned and DarkRift set ServerID),
//   - never a second join for an id DarkRift holds (DarkRift's Dictionary.Add would throw): a join
//     for a held id at the same group/host:port is dropped; at another address it becomes leave + join,
//   - a leave waits leaveGraceMs: a join of the same id at the same address within the grace
//     cancels it (a registry flap: etcd revoked a live lease and the holder registered again),
//   - after a re-attached stream, the snapshot is reconciled: a held id absent from it left while
//     the stream was down and gets a leave (through the grace like any other).
// C# 6 only (Debian's mcs 6.8).

using System;
using System.Collections.Generic;
using System.Threading;

namespace DarkRift.Etcd
{
    internal sealed class Member
    {
        public ushort Id;
        public string Group;
        public string Host;
        public ushort Port;
        public IDictionary<string, string> Properties;

        public bool SameAddress(Member other)
        {
            return other != null && Group == other.Group && Host == other.Host && Port == other.Port;
        }

        public override string ToString() { return Id + " (" + Group + " at " + Host + ":" + Port + ")"; }
    }

    internal sealed class MemberDelivery
    {
        private enum Kind { Join, Leave, SnapshotBegin, Synced }

        private sealed class Item
        {
            public Kind Kind;
            public Member Member;
            public ushort Id;
        }

        private sealed class PendingLeave
        {
            public Member Member;
            public DateTime Deadline;
        }

        private readonly Action<Member> join;
        private readonly Action<ushort> leave;
        private readonly Action<string> trace;
        private readonly Action<string, Exception> error;
        private readonly Func<bool> gateOpen;
        private readonly int leaveGraceMs;

        private readonly Queue<Item> queue = new Queue<Item>();
        private readonly Dictionary<ushort, Member> held = new Dictionary<ushort, Member>();
        private readonly Dictionary<ushort, PendingLeave> pending = new Dictionary<ushort, PendingLeave>();
        private HashSet<ushort> snapshotSeen;
        private volatile bool stopping;
        private Thread thread;

        /// <param name="gateOpen">Polled until true before the first delivery.</param>
        public MemberDelivery(int leaveGraceMs, Func<bool> gateOpen, Action<Member> join, Action<ushort> leave,
            Action<string> trace, Action<string, Exception> error)
        {
            this.leaveGraceMs = leaveGraceMs;
            this.gateOpen = gateOpen;
            this.join = join;
            this.leave = leave;
            this.trace = trace;
            this.error = error;
        }

        public void Start()
        {
            thread = new Thread(Run) { IsBackground = true, Name = "DarkRift.Etcd delivery" };
            thread.Start();
        }

        /// <summary>Stops delivering; pending leaves are dropped (the server is shutting down).</summary>
        public void Stop()
        {
            stopping = true;
            lock (queue)
                Monitor.PulseAll(queue);
            if (thread != null && thread != Thread.CurrentThread)
                thread.Join(2000);
        }

        public void Join(Member m) { Enqueue(new Item { Kind = Kind.Join, Member = m, Id = m.Id }); }
        public void Leave(ushort id) { Enqueue(new Item { Kind = Kind.Leave, Id = id }); }
        /// <summary>A (re)attached stream starts: the joins up to Synced are the agent's whole view.</summary>
        public void SnapshotBegin() { Enqueue(new Item { Kind = Kind.SnapshotBegin }); }
        public void Synced() { Enqueue(new Item { Kind = Kind.Synced }); }

        private void Enqueue(Item item)
        {
            lock (queue)
            {
                queue.Enqueue(item);
                Monitor.PulseAll(queue);
            }
        }

        private void Run()
        {
            while (!stopping && !gateOpen())
                Thread.Sleep(5);
            while (!stopping)
            {
                Item item = null;
                lock (queue)
                {
                    if (queue.Count == 0)
                    {
                        int wait = Timeout.Infinite;
                        if (pending.Count > 0)
                        {
                            DateTime first = DateTime.MaxValue;
                            foreach (PendingLeave p in pending.Values)
                                if (p.Deadline < first)
                                    first = p.Deadline;
                            wait = (int)Math.Max(0, Math.Ceiling((first - DateTime.UtcNow).TotalMilliseconds));
                        }
                        if (wait != 0)
                            Monitor.Wait(queue, wait);
                    }
                    if (queue.Count > 0)
                        item = queue.Dequeue();
                }
                if (stopping)
                    return;
                try
                {
                    if (item != null)
                        Handle(item);
                    ExpireLeaves();
                }
                catch (Exception e)
                {
                    error("Delivering a registry event to DarkRift failed.", e);
                }
            }
        }

        private void Handle(Item item)
        {
            switch (item.Kind)
            {
                case Kind.SnapshotBegin:
                    snapshotSeen = new HashSet<ushort>();
                    break;
                case Kind.Synced:
                    if (snapshotSeen != null)
                    {
                        List<ushort> gone = new List<ushort>();
                        foreach (ushort id in held.Keys)
                            if (!snapshotSeen.Contains(id) && !pending.ContainsKey(id))
                                gone.Add(id);
                        foreach (ushort id in gone)
                        {
                            trace("Server " + id + " is not in the registry's view after the stream re-attached: it left while the stream was down.");
                            StartLeave(id);
                        }
                        snapshotSeen = null;
                    }
                    break;
                case Kind.Join:
                    if (snapshotSeen != null)
                        snapshotSeen.Add(item.Id);
                    OnJoin(item.Member);
                    break;
                case Kind.Leave:
                    StartLeave(item.Id);
                    break;
            }
        }

        private void OnJoin(Member m)
        {
            PendingLeave p;
            Member h;
            if (pending.TryGetValue(m.Id, out p))
            {
                pending.Remove(m.Id);
                if (p.Member.SameAddress(m))
                {
                    trace("Leave of server " + m + " cancelled: it joined again within the " + leaveGraceMs + " ms grace (registry flap), DarkRift is not told.");
                    held[m.Id] = m;
                    return;
                }
                DeliverLeave(m.Id);
            }
            else if (held.TryGetValue(m.Id, out h))
            {
                if (h.SameAddress(m))
                    return; // already known (e.g. the snapshot of a re-attached stream)
                trace("Server " + m.Id + " moved from " + h.Host + ":" + h.Port + " to " + m.Host + ":" + m.Port + ": leave then join.");
                DeliverLeave(m.Id);
            }
            held[m.Id] = m;
            join(m);
        }

        private void StartLeave(ushort id)
        {
            Member m;
            if (!held.TryGetValue(id, out m) || pending.ContainsKey(id))
                return; // never delivered (or already leaving): nothing to tell DarkRift
            if (leaveGraceMs <= 0)
            {
                DeliverLeave(id);
                return;
            }
            pending[id] = new PendingLeave { Member = m, Deadline = DateTime.UtcNow.AddMilliseconds(leaveGraceMs) };
        }

        private void ExpireLeaves()
        {
            if (pending.Count == 0)
                return;
            DateTime now = DateTime.UtcNow;
            List<ushort> due = new List<ushort>();
            foreach (KeyValuePair<ushort, PendingLeave> kv in pending)
                if (kv.Value.Deadline <= now)
                    due.Add(kv.Key);
            foreach (ushort id in due)
            {
                pending.Remove(id);
                DeliverLeave(id);
            }
        }

        private void DeliverLeave(ushort id)
        {
            held.Remove(id);
            leave(id);
        }
    }
}
