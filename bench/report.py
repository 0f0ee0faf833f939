#!/usr/bin/env python3
"""Turn the raw samples of bench/run.sh into BENCHMARKS.md.

Inputs (under OUT, default bench/out):
  criterion/<group>/<bench>/new/{sample,benchmark}.json  criterion's samples
  e2e.json        figures 3-6 and 9-11 (agent/benches/e2e.rs)
  explorer.json   figure 7 (explorer/benches/load.rs)
  fleet.json      figure 8 (explorer/benches/fleet.rs)
  machine.json    cores, CPU, kernel, commit (written by run.sh)

Every statistic is over the listed samples: median, p99 by nearest rank
(with fewer than 100 samples it is the largest but one or the largest),
min and max. Ratios are of medians measured in the same run.

`report.py --fleet-only OUT DEST` writes figure 8 alone into an existing
DEST (its section and its summary row), for `bench/fleet.sh`.
"""

import json
import math
import os
import sys
from pathlib import Path

ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
FLEET_ONLY = "--fleet-only" in sys.argv[1:]
OUT = Path(ARGS[0] if len(ARGS) > 0 else "bench/out")
DEST = Path(ARGS[1] if len(ARGS) > 1 else "BENCHMARKS.md")


def load(name):
    p = OUT / name
    return json.loads(p.read_text()) if p.exists() else None


def stats(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    n = len(xs)
    med = xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
    p99 = xs[max(0, math.ceil(0.99 * n) - 1)]
    return {"n": n, "median": med, "p99": p99, "min": xs[0], "max": xs[-1]}


def fmt(v, unit):
    if v is None:
        return "n/a"
    if unit == "ms":
        return f"{v * 1e3:,.1f} ms"
    if unit == "us":
        return f"{v * 1e6:,.1f} µs"
    if unit == "x":
        return f"{v:.3f}"
    if unit == "s":
        return f"{v:,.3f} s"
    if unit == "/s":
        return f"{v:,.0f}/s"
    if unit == "MiB":
        return f"{v / 1024:,.1f} MiB"
    return f"{v:,.3g}"


def row(label, xs, unit, samples=None):
    if unit == "/s":
        return row_rate(label, xs)
    s = stats(xs)
    if s is None:
        return f"| {label} | n/a | n/a | n/a | n/a | 0 |"
    return (
        f"| {label} | {fmt(s['median'], unit)} | {fmt(s['p99'], unit)} | "
        f"{fmt(s['min'], unit)} | {fmt(s['max'], unit)} | {samples or s['n']} |"
    )


def row_rate(label, rates):
    """A rate: statistics of the time per item, shown as rates, so p99 is the
    slow tail (the rate of the 99th-percentile slowest sample)."""
    s = stats([1 / r for r in rates if r])
    if s is None:
        return f"| {label} | n/a | n/a | n/a | n/a | 0 |"
    return (
        f"| {label} | {fmt(1 / s['median'], '/s')} | {fmt(1 / s['p99'], '/s')} | "
        f"{fmt(1 / s['max'], '/s')} | {fmt(1 / s['min'], '/s')} | {s['n']} |"
    )


HEAD = "| measure | median | p99 | min | max | samples |\n|---|---|---|---|---|---|"


def criterion(group, bench):
    """Per-sample rate (elements/s) and per-element time (s) of a bench."""
    d = OUT / "criterion" / group / bench / "new"
    if not (d / "sample.json").exists():
        return None
    s = json.loads((d / "sample.json").read_text())
    b = json.loads((d / "benchmark.json").read_text())
    elems = (b.get("throughput") or {}).get("Elements", 1)
    per_iter = [t / i / 1e9 for t, i in zip(s["times"], s["iters"])]
    return {
        "rate": [elems / t for t in per_iter],
        "per_elem": [t / elems for t in per_iter],
        "title": b["title"],
    }


def med(xs):
    s = stats(xs)
    return s["median"] if s else None


def verdict(ok):
    return "**met**" if ok else "**missed**"


def main():
    machine = load("machine.json") or {}
    e2e = load("e2e.json") or {}
    expl = load("explorer.json") or {}
    lines = []
    w = lines.append
    summary = []

    w("# Benchmarks")
    w("")
    w(
        "Written by `bench/run.sh` (do not edit by hand: run it again). "
        "Every figure gives the command that produced it; statistics are over "
        "the samples named in its table: median, p99 (nearest rank: with fewer "
        "than 100 samples that is the largest or next to largest), min and max. "
        "For a rate, p99 is the slow tail: the rate of the 99th-percentile "
        "slowest sample. "
        "A ratio compares medians measured side by side in the same run."
    )
    w("")
    w(f"- machine: {machine.get('cores', '?')} cores ({machine.get('cpu', '?')}), "
      f"{machine.get('mem', '?')} RAM, kernel {machine.get('kernel', '?')}, "
      f"Docker {e2e.get('docker', '?')}")
    w(f"- code: `{machine.get('commit', '?')}`{' with uncommitted changes' if machine.get('dirty') else ''}, "
      f"built with `cargo build --release --bins` and `cargo bench` (release profile)")
    w(f"- run: {machine.get('date', '?')}, total {machine.get('total_s', 0):.0f} s. "
      "The machine is shared (other builds may run at the same time), so absolute "
      "numbers move between runs; ratios move less.")
    w("")
    w("SUMMARY_PLACEHOLDER")
    w("")

    # Figure 1 ---------------------------------------------------------------
    w("## 1. Engine throughput")
    w("")
    w("`cargo bench -p agent --bench engine` (agent/benches/engine.rs). The real "
      "`Engine::handle(Work::Poll{..})` with a no-op `Provisioner`, a sled `Store` "
      "in a temp dir on the same disk, signature check, judgement, the node's "
      "signed result, the cache+outbox transaction, and the flush the engine does "
      "once per poll answer. One sample = one run from an empty store.")
    w("")
    w(HEAD)
    one = criterion("engine", "one_answer_10000")
    logd = criterion("engine", "one_answer_json_log_10000")
    each = criterion("engine", "answer_each_1000")
    if one:
        w(row("10,000 reservations in one poll answer (1 flush), reservations/s", one["rate"], "/s"))
    if logd:
        w(row("same, with the daemon's JSON log lines to a sink, reservations/s", logd["rate"], "/s"))
    if each:
        w(row("1,000 poll answers of 1 reservation (1 flush each), reservations/s", each["rate"], "/s"))
    w("")
    parts = {
        "verify": criterion("engine_parts", "verify_10000"),
        "sign the result": criterion("engine_parts", "sign_result_10000"),
        "store lookups (get, outcome, signature owner)": criterion("engine_parts", "store_lookups_in_10000_10000"),
        "store: record_provisioned + flush": criterion("engine_parts", "store_record_provisioned_then_flush_10000"),
        "restart: decode one cached workload (Store::list of 10,000)": criterion("engine_parts", "store_list_decode_10000"),
    }
    if any(parts.values()):
        w("Where one reservation's time goes (same 10,000 reservations through each step "
          "alone, `cargo bench -p agent --bench engine -- engine_parts`):")
        w("")
        w(HEAD)
        for k, v in parts.items():
            if v:
                w(row(f"{k}, per reservation", v["per_elem"], "us"))
        op = criterion("engine_parts", "store_open_with_10000")
        if op:
            w(row("restart: Store::open of a store holding 10,000 (page cache warm)", op["per_elem"], "ms"))
        w("")
    if one:
        m = med(one["rate"])
        summary.append(("1. Engine throughput (10,000 in one answer)", fmt(m, "/s"), "≥ 10,000/s", m >= 10000,
                        f"{m / 10000:.2f}× the target" if m < 10000 else ""))
    if each:
        m = med(each["rate"])
        summary.append(("1b. Engine, one reservation per answer", fmt(m, "/s"), "(say it)", None, ""))

    # Figure 2 ---------------------------------------------------------------
    w("## 2. Signature verification")
    w("")
    w("`cargo bench -p reservation --bench verify` (reservation/benches/verify.rs), one "
      "thread. `Reservation::verify` (base58 user id → key, point decompression, "
      "base64 signature, the signed message, `verify_strict`) beside a bare "
      "ed25519-dalek `verify_strict` of the same message with key and signature "
      "already decoded, and beside bare dalek doing the same decoding. One sample = "
      "the mean of many verifications.")
    w("")
    w(HEAD)
    ours = criterion("verify", "reservation_verify")
    bare = criterion("verify", "dalek_verify_strict")
    dec = criterion("verify", "dalek_decode_and_verify_strict")
    msg = criterion("verify", "parts_signing_message")
    dcp = criterion("verify", "parts_key_decompress")
    for label, c in [("reservation::Reservation::verify", ours), ("bare dalek verify_strict", bare),
                     ("bare dalek: decode key + signature, verify_strict", dec),
                     ("part: signing_message()", msg), ("part: VerifyingKey::from_bytes (decompress)", dcp)]:
        if c:
            w(row(f"{label}, per verification", c["per_elem"], "us"))
    if ours and bare:
        w("")
        r1 = med(ours["per_elem"]) / med(bare["per_elem"])
        w(f"- verifications/s on one core: ours {fmt(med(ours['rate']), '/s')}, bare {fmt(med(bare['rate']), '/s')}")
        w(f"- ratio of the criterion medians (measured one after the other, so load drift between them counts): ours / bare verify_strict {r1:.3f}")
        if dec:
            r2 = med(ours["per_elem"]) / med(dec["per_elem"])
            w(f"- ratio ours / bare decode+verify_strict: {r2:.3f}")
        pv = load("verify-paired.json")
        if pv:
            ratios = [r["ours_s"] / r["bare_s"] for r in pv["rounds"]]
            w("")
            w(f"Paired, the figure's ratio: {len(ratios)} rounds of {pv['per_round']} verifications "
              "through `Reservation::verify` then as many bare `verify_strict` (order alternating), "
              "so load from other processes falls on both alike (same bench binary, after criterion):")
            w("")
            w(HEAD)
            w(row("ours / bare, per round", ratios, "x"))
            w(row("ours, per verification", [r["ours_s"] for r in pv["rounds"]], "us"))
            w(row("bare verify_strict, per verification", [r["bare_s"] for r in pv["rounds"]], "us"))
            rp = med(ratios)
            w("")
            w(f"- **paired ratio ours / bare: {rp:.3f}** (target ≤ 1.05); one core: ours "
              f"{fmt(1 / med([r['ours_s'] for r in pv['rounds']]), '/s')}, bare "
              f"{fmt(1 / med([r['bare_s'] for r in pv['rounds']]), '/s')}")
            summary.append(("2. Signature verification, ours / bare dalek (paired)", f"{rp:.3f}", "≤ 1.05",
                            rp <= 1.05, f"criterion medians: {r1:.3f}"))
        else:
            summary.append(("2. Signature verification, ours / bare dalek", f"{r1:.3f}", "≤ 1.05", r1 <= 1.05,
                            f"{fmt(med(ours['rate']), '/s')} vs {fmt(med(bare['rate']), '/s')}"))
    w("")

    # Figure 3 ---------------------------------------------------------------
    f3 = e2e.get("fig3")
    w("## 3. Reservation to running container")
    w("")
    w("`cargo bench -p agent --bench e2e -- fig3` (agent/benches/e2e.rs): real "
      "`explorer serve` and `agent` (release) on loopback, the real Docker engine, "
      "image `agent-test/busybox:latest`, entrypoint `sleep 3600`, 1 CPU, 64 MiB. "
      "The end is Docker's `start` event for the container (then `docker inspect` "
      "confirms State.Running). The agent's start is its `provisioning` log line "
      "(JSON, `RUST_LOG=info`), written once the reservation reached it and was "
      "judged; the POST start is the moment the harness sends the reservation. "
      "Peers in the same loop, order alternating each round: `docker run -d` with "
      "the flags the agent gives Docker (`--network none --cpus 1 --memory 64m "
      "--restart unless-stopped`), and a plain `docker run -d IMAGE sleep 3600` "
      "(default bridge network), each from spawning the CLI to the `start` event.")
    w("")
    if f3:
        runs = f3["runs"]
        a_prov = [r["agent"]["provisioning_to_running_s"] for r in runs]
        a_post = [r["agent"]["post_to_running_s"] for r in runs]
        a_reach = [r["agent"]["post_to_provisioning_s"] for r in runs]
        m = [r["matched"]["spawn_to_running_s"] for r in runs]
        p = [r["plain"]["spawn_to_running_s"] for r in runs]
        w(HEAD)
        w(row("agent: reservation reached it (`provisioning`) → running", a_prov, "ms"))
        w(row("agent: POST to the explorer → running", a_post, "ms"))
        w(row("agent: POST → `provisioning` (explorer, long poll, verify)", a_reach, "ms"))
        w(row("`docker run -d` with the agent's flags → running", m, "ms"))
        w(row("plain `docker run -d` → running", p, "ms"))
        w("")
        r_m = med(a_prov) / med(m)
        r_p = med(a_prov) / med(p)
        r_post = med(a_post) / med(m)
        w(f"- **ratio agent / `docker run -d` (agent's flags): {r_m:.2f}** (target ≤ 1.3); "
          f"from the POST: {r_post:.2f}")
        w(f"- ratio agent / plain `docker run -d`: {r_p:.2f}")
        summary.append(("3. Reservation → running, agent / docker run -d", f"{r_m:.2f}", "≤ 1.3", r_m <= 1.3,
                        f"{fmt(med(a_prov), 'ms')} vs {fmt(med(m), 'ms')}; plain: {r_p:.2f}"))
    else:
        w("not run")
    w("")

    # Figure 4 ---------------------------------------------------------------
    f4 = e2e.get("fig4")
    w("## 4. Expiry lateness")
    w("")
    w("`cargo bench -p agent --bench e2e -- fig4`: waves of 5 container "
      "reservations lasting 3, 3.5, 4, 4.5 and 5 s (`created` is whole seconds, "
      "so the expiry is `created + duration` exactly as the agent computes it), "
      "posted together; lateness is Docker's `destroy` event (the container is "
      "gone) minus the expiry, and `die` minus the expiry. The entrypoint ends on "
      "SIGTERM (`sh -c 'trap \"exit 0\" TERM; sleep 3600 & wait'`). A second set "
      "runs plain `sleep 3600`, which as PID 1 ignores SIGTERM, as users' "
      "processes often do: waves of "
      f"{(f4 or {}).get('ignores_sigterm_wave', '?')} reservations lasting "
      f"{(f4 or {}).get('ignores_sigterm_duration_s', '?')} s posted together (same "
      "`created`, so all expire in the same second), the agent at its default "
      "`--stop-grace` (10 s: SIGTERM 10 s before the expiry, SIGKILL at it); "
      "their lateness is Docker's `die` event of the container (the process is "
      "gone) minus the expiry, and `destroy` minus the expiry.")
    w("")
    if f4:
        ta = f4.get("term_aware", [])
        ig = f4.get("ignores_sigterm", [])
        w(HEAD)
        w(row("process ends on SIGTERM: expiry → gone", [r["gone_late_s"] for r in ta], "ms"))
        w(row("process ends on SIGTERM: expiry → exited", [r["die_late_s"] for r in ta], "ms"))
        if ig:
            w(row("process ignores SIGTERM: expiry → exited (`die`)", [r["die_late_s"] for r in ig], "ms"))
            w(row("process ignores SIGTERM: expiry → gone", [r["gone_late_s"] for r in ig], "ms"))
        w("")
        early_ta = [r["die_late_s"] for r in ta if r["die_late_s"] < 0]
        if early_ta:
            w(f"- a negative lateness is an end before the expiry: {len(early_ta)} of {len(ta)} processes that "
              f"end on SIGTERM exited early, by up to {fmt(-min(early_ta), 'ms')}: the agent sends SIGTERM "
              "`--stop-grace` (default 10 s) before the expiry, longer than these reservations last, so "
              "they get it as soon as they run (with lifetimes this short the figure measures that, not "
              "how late the agent is)")
        early = [r["die_late_s"] for r in ig if r["die_late_s"] < 0]
        if early:
            w(f"- {len(early)} of {len(ig)} processes that ignore SIGTERM were killed before their expiry, "
              f"by up to {fmt(-min(early), 'ms')} (the workload loses that much of its paid time; see "
              "\"Where the time goes\")")
        if early_ta or early:
            w("")
        s = stats([r["gone_late_s"] for r in ta])
        if s:
            summary.append(("4. Expiry lateness p99 (process ends on SIGTERM)", fmt(s["p99"], "ms"), "≤ 1 s",
                            s["p99"] <= 1.0, f"p50 {fmt(s['median'], 'ms')}, n={s['n']}"))
        if ig:
            s2 = stats([r["die_late_s"] for r in ig])
            wave = f4.get("ignores_sigterm_wave")
            label = (f"4b. Expiry lateness p99, process ignores SIGTERM, {wave} expiring in the same second"
                     if wave else "4b. Expiry lateness (process ignores SIGTERM)")
            s3 = stats([r["gone_late_s"] for r in ig])
            summary.append((label, fmt(s2["p99"], "ms"), "≤ 1 s", s2["p99"] <= 1.0,
                            f"exited (`die`); p50 {fmt(s2['median'], 'ms')}, n={s2['n']}; "
                            f"gone p99 {fmt(s3['p99'], 'ms')}"
                            + (f"; negative = killed before the expiry (earliest {fmt(-s2['min'], 'ms')} before)"
                               if s2["min"] < 0 else "")))
    else:
        w("not run")
    w("")

    # Figure 5 / 6 -------------------------------------------------------------
    f5 = e2e.get("fig5")
    f6 = e2e.get("fig6")
    w("## 5. Memory")
    w("")
    w("VmRSS from `/proc/PID/status` of the release `agent`. Idle: "
      "`cargo bench -p agent --bench e2e -- fig5`, a fresh root, real Docker, read "
      "3 s after `agent ready` (one sample per start). With 10,000 cached: the "
      "restarts of figure 6, read at ready and 2 s later; VmHWM is the peak.")
    w("")
    w(HEAD)
    if f5:
        w(row("idle, empty cache: VmRSS", [r["rss_kib"] for r in f5["runs"]], "MiB"))
        w(row("idle, empty cache: VmHWM (peak)", [r["hwm_kib"] for r in f5["runs"]], "MiB"))
        s = stats([r["rss_kib"] for r in f5["runs"]])
        summary.append(("5a. RSS idle", fmt(s["median"], "MiB"), "≤ 20 MiB", s["max"] <= 20 * 1024,
                        f"max {fmt(s['max'], 'MiB')}"))
    if f6:
        st = f6["stub"]
        w(row(f"{f6['cached']:,} cached, 2 s after ready: VmRSS", [r["rss_idle_kib"] for r in st], "MiB"))
        w(row(f"{f6['cached']:,} cached, at ready: VmRSS", [r["rss_at_ready_kib"] for r in st], "MiB"))
        w(row(f"{f6['cached']:,} cached: VmHWM (peak)", [r["hwm_kib"] for r in st], "MiB"))
        s = stats([r["rss_idle_kib"] for r in st])
        summary.append((f"5b. RSS with {f6['cached']:,} cached", fmt(s["median"], "MiB"), "≤ 30 MiB",
                        s["max"] <= 30 * 1024, f"peak {fmt(stats([r['hwm_kib'] for r in st])['max'], 'MiB')}"))
    w("")

    w("## 6. Restart with 10,000 cached reservations")
    w("")
    w("`cargo bench -p agent --bench e2e -- fig6`. 10,000 container reservations "
      "are POSTed to a real `explorer serve`, then written into the agent's store "
      "as the engine writes them (`Store::record_provisioned`, results signed by "
      "the node key, outbox acknowledged), and each run starts `agent` on a fresh "
      "copy of that root. At start the agent lists each workload type's labelled "
      "objects once, checks only cached workloads missing from the lists "
      "(`Provisioner::exists`) and re-provisions what is gone. No machine here can "
      "run 10,000 containers, so these runs point `DOCKER_HOST` at a Docker API "
      "stub in the harness that lists all 10,000 containers running and labelled "
      "(as `docker ps` would) and inspects any of them as running; nothing is "
      "re-provisioned (`repairs` = 0). The same path against the real engine runs "
      "with a few real containers. Ready = the control socket answers "
      "(`{\"cmd\":\"status\"}`, what `agentctl status` sends) with "
      "`\"ready\": true` (cache loaded and reconciled); also shown: the `agent "
      "ready` log line, and the first `from=0` poll answer (listing all 10,000) "
      "handled (status `cursor` moves).")
    w("")
    if f6:
        st = f6["stub"]
        w(HEAD)
        w(row("process start → socket answers", [r["start_to_socket_s"] for r in st], "ms"))
        w(row("process start → status `ready: true` (loaded, reconciled)", [r.get("start_to_ready_status_s") for r in st], "ms"))
        w(row("process start → `agent ready` log line", [r["start_to_ready_log_s"] for r in st], "ms"))
        w(row("process start → first from=0 answer (10,000) handled", [r["start_to_first_poll_handled_s"] for r in st], "ms"))
        real = f6.get("real") or []
        if real:
            k = f6.get("real_cached")
            w(row(f"real engine, {k} cached running containers: start → ready", [r.get("start_to_ready_status_s") for r in real], "ms"))
            w(row(f"real engine, {k} cached: start → first answer handled", [r["start_to_first_poll_handled_s"] for r in real], "ms"))
        w(row("one container inspect, stub", f6["inspect_stub_s"], "us"))
        w(row("one container inspect, real engine", f6["inspect_real_s"], "us"))
        w("")
        w(f"- Docker calls per run: {st[0].get('stub_lists')} lists, {st[0].get('stub_inspects')} inspects; "
          f"repairs: {st[0].get('repairs')}")
        w("- not measured: how long the real engine takes to list 10,000 running containers "
          "(one call; its answer is larger than the stub's)")
        w(f"- explorer POST rate while seeding: {fmt(f6.get('explorer_post_rate_per_s'), '/s')} (1 client); "
          f"seeding the store: {f6.get('seed_s', 0):.1f} s")
        t = med([r.get("start_to_ready_status_s") for r in st])
        tp = med([r["start_to_first_poll_handled_s"] for r in st])
        summary.append(("6. Restart → ready, 10,000 cached (Docker stub)", fmt(t, "s"), "≤ 0.3 s", t <= 0.3,
                        f"first from=0 answer handled: {fmt(tp, 's')}"))
    else:
        w("not run")
    w("")

    # Figure 7 ---------------------------------------------------------------
    w("## 7. Explorer")
    w("")
    w("`cargo bench -p explorer --bench load` (explorer/benches/load.rs): the "
      "release `explorer serve` on loopback, "
      f"{expl.get('clients', '?')} concurrent keep-alive clients in one process on "
      "the same machine. Submit: POST of distinct user-signed reservations (the "
      "server verifies each signature and flushes before answering 201), "
      f"{expl.get('submits_per_run', '?')} per run. Poll: `GET /reservations/{{node}}/poll?from=0` "
      f"answering {expl.get('poll_answer_reservations', '?')} reservations, "
      f"{expl.get('polls_per_run', '?')} per run. Rates are per run; latencies per request.")
    w("")
    if expl:
        w(HEAD)
        sub = expl["submit"]
        pol = expl["poll"]
        w(row("submit (POST) requests/s, 1 client", [r["rate_per_s"] for r in sub], "/s"))
        w(row("submit latency, 1 client", [x for r in sub for x in r["latency_s"]], "ms"))
        w(row(f"poll requests/s, {expl.get('clients')} clients", [r["rate_per_s"] for r in pol], "/s"))
        w(row(f"poll latency, {expl.get('clients')} clients", [x for r in pol for x in r["latency_s"]], "ms"))
        cc = expl.get("submit_concurrent") or []
        if isinstance(cc, dict):
            cc = [cc]
        if cc:
            w(row(f"submit (POST) requests/s, {expl.get('clients')} clients",
                  [r["rate_per_s"] for r in cc if not r["stalled_clients"]], "/s"))
            w(row(f"submit latency, {expl.get('clients')} clients", [x for r in cc for x in r["latency_s"]], "ms"))
            w("")
            stalled = [r for r in cc if r["stalled_clients"]]
            if stalled:
                r = stalled[0]
                w(f"- **the server stalled** under {expl.get('clients')} concurrent submit clients: "
                  f"{r['answered']} of {r['sent']} answered, {r['stalled_clients']} clients got no answer within 10 s")
            else:
                w(f"- no stall: every one of {sum(r['answered'] for r in cc):,} concurrent submits was answered "
                  "(before the explorer flushed on the blocking pool, a few dozen were, then every client hung: "
                  "sled 0.34's concurrent `flush_async`, spacejam/sled#1308)")
        conc = [r["rate_per_s"] for r in cc if not r["stalled_clients"]]
        summary.append((f"7. Explorer submit (1 / {expl.get('clients')} clients) / poll",
                        f"{fmt(med([r['rate_per_s'] for r in sub]), '/s')} / {fmt(med(conc), '/s')} / "
                        f"{fmt(med([r['rate_per_s'] for r in pol]), '/s')}", "record it", None,
                        "concurrent submits stalled" if any(r["stalled_clients"] for r in cc) else ""))
    else:
        w("not run")
    w("")

    fl_lines, fl_summary = fleet_section(load("fleet.json") or {})
    lines.extend(fl_lines)
    summary.extend(fl_summary)

    concurrency_sections(e2e, w, summary, f6)

    table = ["| figure | measured (median unless named) | target | verdict | note |", "|---|---|---|---|---|"]
    for name, val, target, ok, note in summary:
        v = "recorded" if ok is None else verdict(ok)
        table.append(f"| {name} | {val} | {target} | {v} | {note} |")
    text = "\n".join(lines).replace("SUMMARY_PLACEHOLDER", "\n".join(table))
    notes = OUT / "notes.md"
    if notes.exists():
        text += "\n" + notes.read_text()
    DEST.write_text(text + "\n")
    print(f"wrote {DEST}")


def concurrency_sections(e2e, w, summary, f6):
    """Figures 9-11 (issue 13, concurrency and speed): sections and summary rows."""
    # Figure 9 ---------------------------------------------------------------
    f9 = e2e.get("fig9")
    w("## 9. Twelve containers in one poll answer")
    w("")
    k = (f9 or {}).get("k", 12)
    w(f"`cargo bench -p agent --bench e2e -- fig9`: {k} container reservations (as in figure 3: "
      "`sleep 3600`, 1 CPU, 64 MiB) are POSTed to a real `explorer serve` before the agent starts "
      "on a fresh root, so its first poll (`from=0`) answers with all of them; the agent runs them "
      "concurrently (`--max-parallel`, default 4 × cores). Agent: from its first `provisioning` log "
      f"line (the first of the {k} handed to a job) to the last of Docker's `start` events, then "
      f"`docker ps` confirms {k} running. Peer, in the same round (order alternating): {k} "
      "sequential `docker run -d` with the flags the agent gives Docker (figure 3's), from spawning "
      "the first CLI to the last `start` event. Containers are removed between rounds.")
    w("")
    if f9:
        runs = f9["runs"]
        a = [r["agent"]["first_provisioning_to_all_running_s"] for r in runs]
        q = [r["sequential"]["spawn_to_all_running_s"] for r in runs]
        w(HEAD)
        w(row(f"agent: first `provisioning` → all {k} running", a, "s"))
        w(row(f"agent: first → last `provisioning` line (all {k} handed over)",
              [r["agent"]["provisioning_spread_s"] for r in runs], "ms"))
        w(row(f"agent: process start → all {k} running", [r["agent"]["spawn_to_all_running_s"] for r in runs], "s"))
        w(row(f"{k} sequential `docker run -d` (agent's flags) → all running", q, "s"))
        w(row("ratio agent / sequential, per round", [x / y for x, y in zip(a, q)], "x"))
        w("")
        r9 = med(a) / med(q)
        w(f"- **ratio agent / {k} sequential `docker run -d`: {r9:.2f}** (target ≤ 0.5)")
        summary.append((f"9. {k} in one answer → running, agent / {k} sequential docker run -d", f"{r9:.2f}",
                        "≤ 0.5", r9 <= 0.5, f"{fmt(med(a), 's')} vs {fmt(med(q), 's')}, {len(runs)} rounds"))
    else:
        w("not run")
    w("")

    # Figure 10 --------------------------------------------------------------
    f10 = e2e.get("fig10")
    w("## 10. Containers behind a hanging image pull")
    w("")
    w("`cargo bench -p agent --bench e2e -- fig10`: no registry is reachable here, so the harness "
      "runs one on 127.0.0.1 that hangs: it fails the TLS handshake at once (Docker then falls back "
      "to plain HTTP, as for any insecure registry; 127.0.0.0/8 is one by default), answers the "
      "`GET /v2/` ping, and never answers the manifest request, so `docker pull "
      "127.0.0.1:PORT/hang:1` hangs for as long as its client waits (a registry that accepts and "
      "never answers is not enough: Docker's ping gives up after 15 s). One reservation with that "
      "image and 3 with the local test image, agent started with `--provision-timeout "
      f"{(f10 or {}).get('provision_timeout_s', '?')}s`. **same answer**: the 4 are posted before the agent "
      "starts (the hanging one first), timed from the first `provisioning` log line to the last of "
      "the 3 `start` events; **next answer**: the hanging one is posted to a running agent and, "
      "0.5 s after its `provisioning` line, the 3 others, timed from their first POST. "
      "Also checked when the 3 run: the hanging one is neither provisioned nor rolled back; and "
      "how long after its `provisioning` line it ends: at the deadline the agent rolls it back and "
      "signs an error result (its `refused` log line, error quoted below).")
    w("")
    if f10:
        runs = f10["runs"]
        w(HEAD)
        for v, label in (("same", "same answer"), ("next", "next answer")):
            rs = [r for r in runs if r["variant"] == v]
            if rs:
                w(row(f"{label}: 3 running (hanging pull pending)", [r["three_running_s"] for r in rs], "ms"))
        nx = [r for r in runs if r["variant"] == "next"]
        if nx:
            w(row("next answer: POST of the 3 → their first `provisioning` line",
                  [r["three_running_s"] - r["three_provisioning_to_running_s"] for r in nx], "ms"))
        w(row("hanging one: `provisioning` → failed at the deadline",
              [r["hang_provisioning_to_error_s"] for r in runs], "s"))
        w("")
        pending = all(r["hang_pending_when_three_running"] for r in runs)
        w(f"- the hanging one was still pending when the 3 ran: {'yes, every run' if pending else '**no**'}; "
          f"requests the registry stub left hanging: {f10.get('hung_registry_requests')}")
        w(f"- the hanging one's signed error: \"{runs[0].get('hang_error')}\"")
        waited = [r for r in nx if not r["hang_pending_when_three_running"]]
        if waited:
            w(f"- **next answer: in {len(waited)} of {len(nx)} runs the 3 were handed to jobs only once "
              "the hanging one had failed** (their `provisioning` lines follow its `refused` line): a job "
              "that hangs holds up the reservations of later poll answers")
        fail = fmt(med([r['hang_provisioning_to_error_s'] for r in runs]), 's')
        for v, tag, label in (("same", "10a", "same poll answer"), ("next", "10b", "next poll answer")):
            rs = [r for r in runs if r["variant"] == v]
            if not rs:
                continue
            worst = max(r["three_running_s"] for r in rs)
            ok = all(r["hang_pending_when_three_running"] for r in rs)
            summary.append((f"{tag}. 3 containers behind a hanging pull, {label} → running (worst)",
                            fmt(worst, "s"), "≤ 2 s", worst <= 2.0 and ok,
                            f"n={len(rs)}; hanging one still pending then: {'yes' if ok else 'no'}; "
                            f"it failed after {fail}"))
    else:
        w("not run")
    w("")

    # Figure 11 --------------------------------------------------------------
    f11 = e2e.get("fig11")
    w("## 11. Restart with N containers running on the real engine")
    w("")
    w("`cargo bench -p agent --bench e2e -- fig11` (sizes: `BENCH_FIG11_SIZES`, default 500,1000): "
      "N container reservations (busybox `sleep 3600`, 1 CPU, 16 MiB so the node's memory admits "
      "1,000) are POSTed before the agent starts on a fresh root and provisioned by it against the "
      "real engine (provisioning rate: from its first `provisioning` log line to status `cached` = "
      "N; `docker ps` then confirms N running). The agent is killed with SIGKILL; each restart "
      "starts `agent` on a copy of its root, and ready is figure 6's: the status (what `agentctl "
      "status` sends) says `ready: true` (cache loaded, the engine's containers listed and "
      "reconciled). Beside figure 6's stub figure. Every container is removed afterwards.")
    w("")
    if f11:
        w(HEAD)
        for sz in f11["sizes"]:
            n = sz["n"]
            rs = sz["restarts"]
            w(row(f"{n:,} running: process start → status `ready: true`", [r["start_to_ready_status_s"] for r in rs], "ms"))
            w(row(f"{n:,} running: process start → first from=0 answer handled",
                  [r["start_to_first_poll_handled_s"] for r in rs], "ms"))
            w(row(f"{n:,} running: VmRSS 2 s after ready", [r["rss_idle_kib"] for r in rs], "MiB"))
            w(row(f"{n:,} running: VmHWM (peak)", [r["hwm_kib"] for r in rs], "MiB"))
        w("")
        for sz in f11["sizes"]:
            ma = sz.get("mem_available_with_all_running_kib")
            w(f"- {sz['n']:,}: provisioned through the agent at {sz['provision_rate_per_s']:.1f}/s "
              f"({sz['first_provisioning_to_all_provisioned_s']:.1f} s from the first `provisioning` line), "
              f"agent VmRSS then {fmt(sz['rss_after_provisioning_kib'], 'MiB')}; "
              f"MemAvailable with all running: {fmt(ma, 'MiB') if ma else 'n/a'}; "
              f"repairs at restart: {', '.join(str(r['repairs']) for r in sz['restarts'])}; "
              f"removing them took {sz['cleanup_s']:.0f} s")
        if f6:
            w(f"- figure 6 (stub, {f6['cached']:,} cached): "
              f"{fmt(med([r.get('start_to_ready_status_s') for r in f6['stub']]), 'ms')} to ready")
        big = max(f11["sizes"], key=lambda z: z["n"])
        t = med([r["start_to_ready_status_s"] for r in big["restarts"]])
        summary.append((f"11. Restart → ready, {big['n']:,} containers running (real engine)", fmt(t, "s"),
                        "≤ 2 s (1,000)", t <= 2.0 if big["n"] >= 1000 else None,
                        f"RSS {fmt(med([r['rss_idle_kib'] for r in big['restarts']]), 'MiB')}; "
                        f"provisioned at {big['provision_rate_per_s']:.1f}/s"
                        + ("" if big["n"] >= 1000 else "; fewer than 1,000, so no verdict")))
    else:
        w("not run")
    w("")


FLEET_TITLE = "## 8. Explorer at fleet scale: PostgreSQL replicas vs sled"


def fleet_section(fl):
    """Figure 8: its section's lines and its summary rows."""
    lines = []
    w = lines.append
    summary = []
    w(FLEET_TITLE)
    w("")
    if not fl:
        # The text below formats its numbers (`:,` fails on "?").
        return lines + ["`bash bench/fleet.sh`: not run", ""], summary
    w("`bash bench/fleet.sh` (`cargo bench -p explorer --bench fleet`, explorer/benches/fleet.rs): "
      "release `explorer serve` processes on loopback: **sled**, one server (`--data`), beside "
      "**2 PG replicas**, two servers on one PostgreSQL database (a throwaway cluster with "
      "PostgreSQL's default durability: fsync and synchronous commit on; sled flushes before each 201). "
      f"Each run: {fl.get('nodes', '?'):,} simulated nodes long-poll, one task each in one process "
      "(node i polls replica i mod 2, as a load balancer spreads them); once every poll is held "
      "(`explorer_long_polls_open`), bursts: at each level of concurrent users "
      f"({', '.join(str(u) for u in levels_of(fl))}), they POST "
      f"{fl.get('submits_per_run', '?'):,} pre-signed reservations for random nodes, alternating "
      f"replicas; then {fl.get('paced_per_run', '?')} more paced at "
      f"{fl.get('paced_rate_per_s', 0):.0f}/s. Submit → answer: from sending a reservation's POST "
      "to its node's long poll answering with it. A setup's capacity is its best median rate over "
      "the levels: few users measure round trips (each user waits for its 201 before the next POST), "
      "many measure what the servers take (sled flushes per POST; each PostgreSQL replica commits "
      "its concurrent POSTs together). Client, servers and PostgreSQL share the 2 cores. "
      f"Setups alternate order each run. PostgreSQL: {fl.get('postgres', '?')}. "
      f"Run at `{fl.get('commit', '?')}` on {fl.get('date', '?')}.")
    w("")
    sl, pg = fl["sled"], fl["pg2"]
    levels = levels_of(fl)
    rate = lambda runs, u: [b["submit_rate_per_s"] for r in runs for b in bursts_of(r, fl) if b["users"] == u]
    lats = lambda runs, u: [x for r in runs for b in bursts_of(r, fl) if b["users"] == u for x in b["burst_latency_s"]]
    w(HEAD)
    for u in levels:
        for name, runs in (("sled", sl), ("2 PG replicas", pg)):
            w(row(f"{name}: submits/s, {u} users", rate(runs, u), "/s"))
    for u in levels:
        for name, runs in (("sled", sl), ("2 PG replicas", pg)):
            w(row(f"{name}: submit → long-poll answer, {u} users", lats(runs, u), "ms"))
    for name, runs in (("sled", sl), ("2 PG replicas", pg)):
        w(row(f"{name}: submit → long-poll answer, paced {fl.get('paced_rate_per_s', 0):.0f}/s",
              [x for r in runs for x in r["paced_latency_s"]], "ms"))
    w("")
    peaks = [r["db_connections_peak"] for r in pg if r.get("db_connections_peak") is not None]
    w(f"- connections: {sl[0]['http_connections']:,} HTTP connections at most held by the clients "
      f"(one long poll per node, one per user) on either setup; PostgreSQL client backends, peak over "
      f"a run, both replicas: {', '.join(str(p) for p in peaks)} (each replica: a pool of at most "
      f"{fl.get('max_connections_per_replica', '?')}, its LISTEN connection included). Held polls use no "
      "database connection while they wait.")
    for u in levels:
        tx = [b["db_transactions_per_submit"] for r in pg for b in bursts_of(r, fl)
              if b["users"] == u and b.get("db_transactions_per_submit") is not None]
        if tx:
            w(f"- database transactions per reservation, {u} users, both replicas (`pg_stat_database`: "
              "the inserts, the NOTIFY batches, the woken polls' queries and any query of a node's next "
              f"poll): {', '.join(f'{x:.2f}' for x in tx)}")
    n_burst = fl["submits_per_run"]
    answered = lambda runs: all(len(b["burst_latency_s"]) == n_burst for r in runs for b in bursts_of(r, fl)) \
        and all(len(r["paced_latency_s"]) == fl["paced_per_run"] for r in runs)
    w(f"- every reservation was answered to its node: sled {'yes' if answered(sl) else '**no**'}, "
      f"2 PG replicas {'yes' if answered(pg) else '**no**'}")
    per_level = [(u, med(rate(sl, u)), med(rate(pg, u))) for u in levels]
    ratios = [(u, p / s if s and p else None) for u, s, p in per_level]
    cap_s = max((s for _, s, _ in per_level if s), default=None)
    cap_p = max((p for _, _, p in per_level if p), default=None)
    ratio = cap_p / cap_s if cap_s and cap_p else None
    burst_p99 = [(u, stats(lats(pg, u))) for u in levels]
    worst = max((s["p99"] for _, s in burst_p99 if s), default=None)
    lat_p = stats([x for r in pg for x in r["paced_latency_s"]])
    w(f"- 2 PG replicas / sled, median submit rate at each level: "
      + ", ".join(f"{u} users {fmt(x, 'x')}" for u, x in ratios))
    w(f"- **2 PG replicas / sled capacity: {fmt(ratio, 'x')}** ({fmt(cap_p, '/s')} vs {fmt(cap_s, '/s')}; "
      f"target ≥ 1); p99 submit → answer on 2 PG replicas: {fmt(lat_p and lat_p['p99'], 'ms')} paced, "
      + ", ".join(f"{fmt(s and s['p99'], 'ms')} at {u} users" for u, s in burst_p99)
      + " in the bursts (target ≤ 100 ms)")
    w("")
    summary.append(("8a. 2 PG replicas / sled, capacity (best median submits/s over the levels)",
                    f"{fmt(ratio, 'x')} ({fmt(cap_p, '/s')} vs {fmt(cap_s, '/s')})",
                    "≥ 1", ratio is not None and ratio >= 1,
                    f"{fl.get('nodes'):,} nodes long-polling; per level: "
                    + ", ".join(f"{u} users {fmt(x, 'x')}" for u, x in ratios)))
    if lat_p:
        summary.append((f"8b. p99 submit → long-poll answer, 2 PG replicas, paced {fl.get('paced_rate_per_s', 0):.0f}/s",
                        fmt(lat_p["p99"], "ms"), "≤ 100 ms", lat_p["p99"] <= 0.1, f"p50 {fmt(lat_p['median'], 'ms')}"))
    if worst is not None:
        summary.append(("8c. p99 submit → long-poll answer, 2 PG replicas, bursts (worst level)",
                        fmt(worst, "ms"), "≤ 100 ms", worst <= 0.1,
                        ", ".join(f"{u} users: p50 {fmt(s and s['median'], 'ms')}" for u, s in burst_p99)))
    return lines, summary


def levels_of(fl):
    """The bursts' levels of concurrent users (one level in older files)."""
    u = fl.get("users", [])
    return u if isinstance(u, list) else [u]


def bursts_of(run, fl):
    """A run's bursts (older files: the run itself, one burst)."""
    if "bursts" in run:
        return run["bursts"]
    return [{"users": levels_of(fl)[0], "submit_rate_per_s": run["submit_rate_per_s"],
             "burst_latency_s": run["burst_latency_s"],
             "db_transactions_per_submit": run.get("db_transactions_per_submit")}]


def fleet_only():
    """Splice figure 8 (section and summary rows) into DEST as it is."""
    fl_lines, fl_summary = fleet_section(load("fleet.json") or {})
    text = DEST.read_text()
    section = "\n".join(fl_lines) + "\n"
    start = text.find(FLEET_TITLE)
    if start >= 0:
        end = text.find("\n## ", start + 1)
        end = len(text) if end < 0 else end + 1
        text = text[:start] + section + text[end:]
    else:
        at = text.find("\n## Where the time goes")
        at = len(text) if at < 0 else at + 1
        text = text[:at] + section + "\n" + text[at:]
    rows = text.split("\n")
    # The summary table: before the first section; older rows of figure 8
    # in later sections (the notes' re-runs) stay as they are.
    head = next(i for i, l in enumerate(rows) if l.startswith("## "))
    top = [l for l in rows[:head] if not l.startswith(("| 8a.", "| 8b.", "| 8c."))]
    last = max(i for i, l in enumerate(top) if l.startswith("| 7."))
    for name, val, target, ok, note in reversed(fl_summary):
        v = "recorded" if ok is None else verdict(ok)
        top.insert(last + 1, f"| {name} | {val} | {target} | {v} | {note} |")
    DEST.write_text("\n".join(top + rows[head:]))
    print(f"wrote figure 8 into {DEST}")


if __name__ == "__main__":
    if FLEET_ONLY:
        fleet_only()
    else:
        main()
