"""A model of the Gluon prefill's barrier protocol, run under random schedules on any machine.

The kernel (``_kernels/prefill_gluon.py``) cannot run here and a protocol mistake on the GPU
is a hang, so its three partitions are written out here as Python generators that make the
same barrier calls in the same order: ``loader`` mirrors ``_load_tiles``, ``consumer`` mirrors
``_consume_tiles`` with ``_take_turn``/``_pass_turn``/``_clean_tail``, ``work_list`` mirrors
the grid and ``_work_tile`` (PERSISTENT). A scheduler interleaves them and the TMA copies
(which land at random later times) at random. Barriers behave as sm_90's: a phase completes
when its arrivals (and expected copies) are in, and a wait on a parity passes while the
barrier's current phase has the other parity. Every wait names the phase it means, and the
model fails when a wait passes on another phase or finds the barrier already past it (a
parity wait would miss a phase: wrong data or a hang), when nothing can move (a deadlock),
when a copy lands in a buffer a consumer's wgmma is still reading, or when a read finds
another tile than the one the consumer counts on. A change to the kernel's protocol must
be made here too. THREAD_ARRIVES (every consumer thread arrives, on barriers counting 128 per
consumer) is the same protocol with arrivals and counts scaled alike: the model's one arrival
per consumer stands for both."""

from __future__ import annotations

import random

import pytest


class Bar:
    """An mbarrier: ``count`` arrivals (and every expected copy) complete a phase."""

    def __init__(self, name, count):
        self.name, self.count, self.pending, self.tx, self.phase = name, count, 0, 0, 0

    def arrive(self, tx=0):
        self.pending += 1
        self.tx += tx
        self._maybe()

    def tx_done(self):
        self.tx -= 1
        self._maybe()

    def _maybe(self):
        if self.pending == self.count and self.tx == 0:
            self.phase += 1
            self.pending = 0


class Bug(Exception):
    """The protocol broke (message: how)."""


def kv_tiles(q0, q_len, seq_len, BM, TN, causal, win):
    """[lo, hi) as ``_kv_tiles``: win is the window's left reach (causal only) or None."""
    hi = seq_len
    if causal:
        hi = min(hi, seq_len - q_len + min(q0 + BM, q_len))
    hi = max(-(-hi // TN), 1)
    lo = 0 if win is None else min(max(seq_len - q_len + q0 - win, 0) // TN, hi - 1)
    return lo, hi


def work_list(seqs, H, levels, P, pid, persistent, dq):
    """(head, seq, [t_q...]) walked by program pid; non-persistent: pid = (head, seq, z)."""
    out = []

    def tiles(seq, first, step):
        q_len, _ = seqs[seq]
        n = -(-q_len // 128) if q_len > dq else 0
        return list(range(first, n, step))

    if persistent:
        for w in range(pid, levels * len(seqs) * H, P):
            head, rest = w % H, w // H
            out.append((head, rest % len(seqs), tiles(rest % len(seqs), rest // len(seqs), levels)))
    else:
        head, seq, z, nz = pid
        out.append((head, seq, tiles(seq, z, nz)))
    return out


def program(seqs, H, work, S, TN, causal, win, pp, early_q, ack):
    """One program's barriers, shared buffers and partitions. An op a partition yields:
    ("wait", bar, phase), ("copy", buffer, tile, bar, copies), ("read", buffer, tile, wg)
    when a wgmma is issued, ("done", buffer, tile, wg) when it is waited for, ("clean",
    buffer, tile) for the first consumer's zeroing of a tail."""
    B = {}

    def bar(name, count):
        B[name] = Bar(name, count)
        return B[name]

    q_ready, q_empty, v_clean, v_seen = bar("q_ready", 1), bar("q_empty", 2), bar("v_clean", 1), bar("v_seen", 1)
    turn = [bar("turn0", 1), bar("turn1", 1)]
    k_ready = [bar(f"k_ready{i}", 1) for i in range(S)]
    v_ready = [bar(f"v_ready{i}", 1) for i in range(S)]
    k_empty = [bar(f"k_empty{i}", 2) for i in range(S)]
    v_empty = [bar(f"v_empty{i}", 2) for i in range(S)]
    turn[0].arrive()
    mem = {"Q": None, **{f"K{i}": None for i in range(S)}, **{f"V{i}": None for i in range(S)}}
    reads = {}  # buffer -> set of readers

    def loader():
        it = n_done = 0
        for head, seq, tqs in work:
            q_len, seq_len = seqs[seq]
            nq = -(-q_len // 128)
            for t_q in tqs:
                q0 = (nq - 1 - t_q) * 128
                yield ("wait", q_empty, n_done - 1)
                q_ready.arrive(tx=2)
                yield ("copy", "Q", (head, seq, q0), q_ready, 2)
                n_done += 1
                for t in range(*kv_tiles(q0, q_len, seq_len, 128, TN, causal, win)):
                    slot = it % S
                    yield ("wait", k_empty[slot], it // S - 1)
                    k_ready[slot].arrive(tx=1)
                    yield ("copy", f"K{slot}", (head // 4, seq, t, it), k_ready[slot], 1)
                    yield ("wait", v_empty[slot], it // S - 1)
                    v_ready[slot].arrive(tx=1)
                    yield ("copy", f"V{slot}", (head // 4, seq, t, it), v_ready[slot], 1)
                    it += 1

    def consumer(wg):
        me, other = turn[wg], turn[1 - wg]
        it = n_done = turns = tails = 0
        for head, seq, tqs in work:
            q_len, seq_len = seqs[seq]
            nq = -(-q_len // 128)
            for t_q in tqs:
                q0 = (nq - 1 - t_q) * 128
                lo, n_kv = kv_tiles(q0, q_len, seq_len, 128, TN, causal, win)
                yield ("wait", q_ready, n_done)
                n_done += 1
                qv = (head, seq, q0)
                if pp:
                    yield ("wait", me, turns)
                turns += 1
                slot = it % S
                yield ("wait", k_ready[slot], it // S)
                kv = (head // 4, seq, lo, it)
                yield ("read", f"K{slot}", kv, wg)
                yield ("read", "Q", qv, wg)
                if pp:
                    other.arrive()
                yield ("done", f"K{slot}", kv, wg)
                yield ("done", "Q", qv, wg)
                k_empty[slot].arrive()
                it += 1
                for t in range(lo + 1, n_kv):
                    slot, prev = it % S, (it - 1) % S
                    if pp:
                        yield ("wait", me, turns)
                    turns += 1
                    yield ("wait", k_ready[slot], it // S)
                    kv = (head // 4, seq, t, it)
                    yield ("read", f"K{slot}", kv, wg)
                    yield ("read", "Q", qv, wg)
                    yield ("wait", v_ready[prev], (it - 1) // S)
                    vv = (head // 4, seq, t - 1, it - 1)
                    yield ("read", f"V{prev}", vv, wg)
                    if pp:
                        other.arrive()
                    yield ("done", f"K{slot}", kv, wg)
                    yield ("done", "Q", qv, wg)
                    k_empty[slot].arrive()
                    yield ("done", f"V{prev}", vv, wg)
                    v_empty[prev].arrive()
                    it += 1
                if early_q:
                    q_empty.arrive()
                prev = (it - 1) % S
                if pp:
                    yield ("wait", me, turns)
                turns += 1
                yield ("wait", v_ready[prev], (it - 1) // S)
                vv = (head // 4, seq, n_kv - 1, it - 1)
                if n_kv * TN > seq_len:
                    if wg == 0:
                        if ack:
                            yield ("wait", v_seen, tails - 1)
                        yield ("clean", f"V{prev}", vv)
                        v_clean.arrive()
                    else:
                        yield ("wait", v_clean, tails)
                        if ack:
                            v_seen.arrive()
                    tails += 1
                    vv = ("clean", vv)
                yield ("read", f"V{prev}", vv, wg)
                if pp:
                    other.arrive()
                yield ("done", f"V{prev}", vv, wg)
                v_empty[prev].arrive()
                if not early_q:
                    q_empty.arrive()

    return B, mem, reads, {"loader": loader(), "wg0": consumer(0), "wg1": consumer(1)}


def run(seqs, H, work, S, TN, causal, win, pp, early_q, ack, rng):
    """Interleave the partitions and the copies in flight at random until all are done;
    raises Bug where the protocol breaks."""
    _, mem, reads, agents = program(seqs, H, work, S, TN, causal, win, pp, early_q, ack)
    blocked = {}  # agent -> pending op
    inflight = []  # (buffer, value, bar)

    def step(name):
        op = blocked.pop(name, None)
        while True:
            if op is None:
                try:
                    op = next(agents[name])
                except StopIteration:
                    agents.pop(name)
                    return True
            kind = op[0]
            if kind == "wait":
                _, b, k = op
                if b.phase > k + 1:
                    raise Bug(f"{name}: {b.name} is at phase {b.phase}, past the one waited for ({k})")
                if b.phase % 2 == (k & 1):  # hardware: that parity's phase has not completed
                    blocked[name] = op
                    return False
                if b.phase != k + 1:
                    raise Bug(f"{name}: {b.name} passed at phase {b.phase} for {k}")
            elif kind == "copy":
                _, buf, val, b, n = op
                for _ in range(n):
                    inflight.append((buf, val, b))
            elif kind == "read":
                _, buf, val, wg = op
                if mem[buf] != val:
                    raise Bug(f"{name} reads {buf}={mem[buf]}, expected {val}")
                reads.setdefault(buf, set()).add(wg)
            elif kind == "done":
                _, buf, val, wg = op
                if mem[buf] != val:
                    raise Bug(f"{name}: {buf} changed to {mem[buf]} under a read of {val}")
                reads[buf].discard(wg)
            elif kind == "clean":
                _, buf, val = op
                if mem[buf] != val or reads.get(buf):
                    raise Bug(f"{name} cleans {buf}={mem[buf]} (expected {val}) read by {reads.get(buf)}")
                mem[buf] = ("clean", val)
            op = None
            if rng.random() < 0.3:
                return True

    while agents or inflight:
        choices = [a for a in agents if a not in blocked or _ready(blocked[a])]
        if inflight:
            choices.append("tma")
        if not choices:
            raise Bug(f"deadlock: {[(a, blocked[a][1].name, blocked[a][2], blocked[a][1].phase) for a in blocked]}")
        c = rng.choice(choices)
        if c == "tma":
            buf, val, b = inflight.pop(rng.randrange(len(inflight)))
            if reads.get(buf):
                raise Bug(f"a copy lands in {buf} while {reads[buf]} read it")
            mem[buf] = val
            b.tx_done()
        else:
            step(c)


def _ready(op):
    _, b, k = op
    return b.phase % 2 != (k & 1) or b.phase > k + 1


def batch(rng):
    seqs = []
    for _ in range(rng.randint(1, 6)):
        kind = rng.random()
        if kind < 0.2:
            q = 0
            s = rng.choice([0, 5, 130])
        elif kind < 0.4:
            q = rng.randint(1, 3)
            s = q + rng.randint(0, 300)
        else:
            q = rng.randint(1, 600)
            s = q + rng.choice([0, 0, rng.randint(0, 900)])
        seqs.append((q, s))
    return seqs


def check(persistent, pp, early_q, ack, trials, seed=0, causal_opts=(True, False)):
    """None, or how the first of ``trials`` random batches (mixed lengths, decodes, empty
    sequences, 1-8 heads, 1-7 persistent programs, ring and tile shapes, windows) broke."""
    rng = random.Random(seed)
    for trial in range(trials):
        seqs = batch(rng)
        H = rng.choice([1, 4, 8])
        S, TN = rng.choice([(2, 128), (3, 64), (3, 128), (3, 32), (2, 64)])
        causal = rng.choice(causal_opts)
        # A sliding window (causal launches only): narrower than, about and wider than a tile.
        win = rng.choice([None, None, 0, 40, 200]) if causal else None
        dq = rng.choice([0, 3])
        levels = max(1, rng.choice([-(-max(q for q, _ in seqs) // 128) if any(q for q, _ in seqs) else 1, 1, 2]))
        if persistent:
            P = rng.choice([1, 2, 3, 7])
            pids = [rng.randrange(P)]
        else:
            P = 0
            pids = [(rng.randrange(H), rng.randrange(len(seqs)), 0, 1)]
        for pid in pids:
            work = work_list(seqs, H, levels, P, pid, persistent, dq)
            try:
                run(seqs, H, work, S, TN, causal, win, pp, early_q, ack, rng)
            except Bug as e:
                return (
                    f"trial {trial}: {e} (seqs {seqs}, H {H}, S {S}, TN {TN}, causal {causal}, win {win}, levels {levels}, "
                    f"P {P})"
                )
    return None


# The kernel's settings: the confirmation (v_seen) exactly without the ping-pong, Q
# released after the last QK^T exactly in the persistent launch.
KERNEL = [
    pytest.param(False, True, id="grid-pingpong"),
    pytest.param(False, False, id="grid-no-pingpong"),
    pytest.param(True, True, id="persistent-pingpong"),
    pytest.param(True, False, id="persistent-no-pingpong"),
]


@pytest.mark.parametrize(("persistent", "pingpong"), KERNEL)
def test_kernel_protocol_holds(persistent, pingpong):
    assert check(persistent, pingpong, early_q=persistent, ack=not pingpong, trials=300) is None


def test_model_finds_a_missed_phase():
    # The persistent launch without the ping-pong and without the confirmation: the first
    # consumer signals two tail cleans before the second waits for one.
    found = check(True, False, early_q=True, ack=False, trials=300)
    assert found is not None and "v_clean" in found
