#!/usr/bin/env python3
"""Turns a suite run (OUT_DIR/*.json from bench/suite.py) into markdown tables.

    python3 bench/report.py OUT_DIR [--write BENCHMARKS.md]

Writes OUT_DIR/tables.md. With --write, replaces every block
`<!-- generated:NAME -->` … `<!-- /generated:NAME -->` in the given file with the fresh table of
that NAME, leaving the prose around it alone (a block whose stage did not run keeps its old text).
A partial run (some stage missing, e.g. `run-all.sh csi`) keeps the file's Machine table and only
replaces or appends its own rows of the summary.
"""
import json
import os
import re
import statistics
import sys


def load(out, stage):
    p = os.path.join(out, f"{stage}.json")
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def f0(x):
    return "–" if x is None else f"{x:,.0f}"


def f1(x):
    return "–" if x is None else f"{x:,.1f}"


def f2(x):
    return "–" if x is None else f"{x:.2f}"


def mib(kib):
    return "–" if kib is None else f"{kib / 1024:.1f} MiB"


def yes(ok):
    return "–" if ok is None else ("**yes**" if ok else "**no**")


def skipped(d):
    return d is None or "skipped" in d


def skip_note(name, d):
    if d is None:
        return f"_not run in this run (stage `{name}`)._\n"
    return f"_skipped: {d['skipped']}_\n"


# ------------------------------------------------------------------------------------------------


def machine_block(m, suite=None):
    if m is None:
        return None
    took = f"| suite run time | {suite['suite_secs'] // 60} min {suite['suite_secs'] % 60} s (builds excluded) |\n" if suite else ""
    return "| | |\n|---|---|\n" + took + (
        f"| date | {m['date']} |\n"
        f"| machine | {m['cores']} cores ({m.get('cpu') or '?'}), {m.get('mem_gib')} GiB |\n"
        f"| kernel | {m['kernel']} |\n"
        f"| Docker | {m.get('docker_server') and 'Engine ' + m['docker_server'] or m.get('dockerd') or '?'} (CLI {m.get('docker_client') or '?'}) |\n"
        f"| toolchain | {m.get('rustc')} |\n"
        f"| source | `{m.get('git')}`{' + uncommitted changes' if m.get('git_dirty') else ''} |\n"
        f"| load average at start | {' '.join(m.get('loadavg_at_start') or [])} |\n"
        f"| CPU pinning | {'server on CPU 0, load generator on CPU 1' if m.get('pinned') else 'none (all processes share both cores)'} |\n"
    )


def protocol_cells(p):
    """(op, conns) -> dict of medians and the median per-round ratio."""
    cells = {}
    for op in ("get", "path", "list"):
        for c in (1, 16, 64):
            runs = [r for r in p["runs"] if r["op"] == op and r["conns"] == c]
            ours = [r for r in runs if r["label"] == "ours"]
            bare = [r for r in runs if r["label"] == "bare"]
            axum = [r for r in runs if r["label"] == "axum"]
            before = [r for r in runs if r["label"] == "before"]
            if not ours or not bare:
                continue
            ratios = []
            for o in ours:
                b = [x for x in bare if x["round"] == o["round"]]
                if b and b[0]["rps"]:
                    ratios.append(o["rps"] / b[0]["rps"])
            cells[(op, c)] = {
                "ours_rps": med([r["rps"] for r in ours]), "bare_rps": med([r["rps"] for r in bare]),
                "ratio": med(ratios),
                "ours_p50": med([r["p50_us"] for r in ours]), "ours_p99": med([r["p99_us"] for r in ours]),
                "bare_p50": med([r["p50_us"] for r in bare]), "bare_p99": med([r["p99_us"] for r in bare]),
                "ours_cpu": med([r["server_cpu_us_per_req"] for r in ours]),
                "bare_cpu": med([r["server_cpu_us_per_req"] for r in bare]),
                "errors": sum(r["errors"] for r in runs),
                "other": med([r.get("other_cpu_pct") for r in runs]),
                "axum_rps": med([r["rps"] for r in axum]),
                "axum_cpu": med([r["server_cpu_us_per_req"] for r in axum]),
                "before_rps": med([r["rps"] for r in before]) if before else None,
                "before_cpu": med([r["server_cpu_us_per_req"] for r in before]) if before else None,
            }
    return cells


def protocol_block(p):
    if skipped(p):
        return skip_note("protocol", p)
    cells = protocol_cells(p)
    before = p.get("baseline")
    lines = [
        "| call | conns | ours req/s | bare hyper req/s | ours / bare | ours p50 / p99 (µs) | bare p50 / p99 (µs) "
        "| server CPU µs per request: ours / axum-only / bare | ours CPU / bare CPU |"
        + (" before: req/s, CPU µs/req |" if before else "") + " other tenants' CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if before else "") + "---:|",
    ]
    for (op, c), x in cells.items():
        cpu_ratio = x["ours_cpu"] / x["bare_cpu"] if x["ours_cpu"] and x["bare_cpu"] else None
        was = f" {f0(x['before_rps'])}, {f1(x['before_cpu'])} |" if before else ""
        lines.append(
            f"| {op.capitalize()} | {c} | {f0(x['ours_rps'])} | {f0(x['bare_rps'])} | {f2(x['ratio'])} | "
            f"{f0(x['ours_p50'])} / {f0(x['ours_p99'])} | {f0(x['bare_p50'])} / {f0(x['bare_p99'])} | "
            f"{f1(x['ours_cpu'])} / {f1(x['axum_cpu'])} / {f1(x['bare_cpu'])} | {f2(cpu_ratio)} |{was} {f0(x['other'])} % |")
    scale = p.get("list_scale") or []
    if scale:
        lines.append("")
        lines.append("| List at | reply | server CPU µs per request: ours / bare | ours / bare |"
                     + (" before |" if before else ""))
        lines.append("|---:|---:|---:|---:|" + ("---:|" if before else ""))
        for n in sorted({r["volumes"] for r in scale}):
            at = {r["label"]: r for r in scale if r["volumes"] == n}
            o, b = at.get("ours"), at.get("bare")
            if not o or not b:
                continue
            ratio = o["server_cpu_us_per_req"] / b["server_cpu_us_per_req"] if b["server_cpu_us_per_req"] else None
            was = f" {f1(at['before']['server_cpu_us_per_req'])} |" if before and at.get("before") else (" – |" if before else "")
            lines.append(f"| {n} volumes | {o.get('reply_bytes', '?')} B | {f1(o['server_cpu_us_per_req'])} / "
                         f"{f1(b['server_cpu_us_per_req'])} | {f2(ratio)} |{was}")
    errors = sum(x["errors"] for x in cells.values())
    lines.append("")
    lines.append(f"Medians of {p['rounds']} interleaved rounds of {p['duration_s']} s each (after "
                 f"{p['warmup_s']} s of warm-up) per cell; ours/bare is the median of the per-round ratios. "
                 f"Reply sizes: Get {p['reply_bytes']['get']} B, Path {p['reply_bytes']['path']} B, "
                 f"List {p['reply_bytes']['list']} B ({p['names']} volumes). Errors: {errors}. "
                 "Other tenants' CPU: what the rest of the machine used during the cells, in % of both "
                 "cores (/proc/stat minus the server and the load generator). Axum-only: the same fixed reply "
                 "behind an axum Router shaped like the daemon's (`rxbench serve --router axum`), i.e. what the "
                 "framework alone adds to bare hyper. "
                 + (f"Before: the daemon built from `{before}`, measured in the same cells. " if before else "")
                 + f"Stage time {p.get('stage_secs')} s.")
    return "\n".join(lines) + "\n"


def docker_block(d):
    if skipped(d):
        return skip_note("docker", d)
    lines = ["| command | ours (vfs) ms | local ms | ours / local | median of pair ratios | stand-in plugin ms "
             "| stand-in / local | runs each |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for k in ("inspect", "ls", "run"):
        x = d.get(k)
        if not x:
            continue
        lines.append(f"| `{x['command']}` | {f1(x['ours_p50_ms'])} | {f1(x['local_p50_ms'])} | "
                     f"{f2(x['ratio'])} | {f2(x['pair_ratio_p50'])} | {f1(x.get('bare_p50_ms'))} | "
                     f"{f2(x.get('bare_ratio'))} | {len(x['ours_ms'])} |")
    calls = d.get("plugin_calls") or {}
    if calls:
        lines.append("")
        lines.append("VolumeDriver calls Docker made to us per command (from the daemon's debug log; "
                     "Path is logged as a Get): " + "; ".join(
                         f"{k}: {', '.join(f'{op} ×{n}' for op, n in v.items()) or 'none'}" for k, v in calls.items()))
    lines.append("")
    lines.append(f"Docker Engine {d.get('docker')}, image `{d.get('image')}`, {d.get('volumes_per_driver')} volumes per "
                 "driver (the stand-in plugin: one), medians of interleaved runs (order rotating). Stand-in plugin: "
                 "`rxbench serve --routes`, bare hyper answering each endpoint with our daemon's own reply — what "
                 f"any plugin costs Docker with zero work behind it. Stage time {d.get('stage_secs')} s.")
    return "\n".join(lines) + "\n"


def loop_block(lp):
    if skipped(lp):
        return skip_note("loop", lp)
    m = lp["median_ms"]
    lines = ["| 16 GiB loop volume | daemon ms | bare sequence ms | daemon / bare |", "|---|---:|---:|---:|"]
    for label, key in (("create + first mount", "create"), ("remount", "remount"), ("unmount", "unmount")):
        d, b = m.get("d_" + key), m.get("b_" + key)
        lines.append(f"| {label} | {f1(d)} | {f1(b)} | {f2(d / b if d and b else None)} |")
    lines.append("")
    lines.append(f"Medians of {lp['runs']} interleaved runs. Stage time {lp.get('stage_secs')} s.")
    return "\n".join(lines) + "\n"


# REX-Ray 0.11's EC2 calls per VolumeDriver call, derived from its algorithm as
# ../shared/reference/rexray.md §3, §3.1, §3.2 and §4 describe it (not measured: there is no
# REX-Ray binary here). "wait" = waitVolumeComplete's polls (DescribeVolumes at 100 ms × 2^i):
# at least one; one against an emulator that attaches at once, typically 3–5 on AWS.
REXRAY_EBS = [
    ("Get (`docker volume inspect`; Docker sends 3 more per `docker run`)", "1",
     "inspect by name: DescribeVolumes filtered on AZ + tag:Name (§3, §4.2)"),
    ("Path", "0–1", "0 with the path cache and an uncounted volume, else an inspect with attachments (§3)"),
    ("List (`docker volume ls`)", "1, unpaginated",
     "Volumes(): one DescribeVolumes returning every named volume in the AZ — all 5,000 in one reply (§3, #1316)"),
    ("Create", "≥ 4", "DescribeVolumes (exists?), CreateVolume, CreateTags (Name), wait until `available` (§4.3)"),
    ("Mount of an existing, detached volume", "≥ 5",
     "inspect (§3.1 step 2), VolumeAttach: DescribeVolumes, AttachVolume, wait until `attached` (§4.4), "
     "re-inspect with attachments (step 6)"),
    ("Unmount (last holder)", "≥ 4",
     "inspect attached-to-me (§3.2), VolumeDetach: DescribeVolumes, DetachVolume, wait until detached (§4.6)"),
    ("`docker run --rm -v vol:/data` of an existing volume", "≥ 12",
     "the calls Docker 20.10 made to us for it in §2 (Get ×3, Mount, Unmount): 3 + 5 + 4"),
]


def rexray_ebs_table():
    lines = ["| VolumeDriver call | REX-Ray EC2 calls (derived) | from its algorithm |", "|---|---:|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in REXRAY_EBS]
    return "\n".join(lines) + "\n"


def ebs_block(e):
    if skipped(e):
        return skip_note("ebs", e) + "\nREX-Ray, for comparison:\n\n" + rexray_ebs_table()
    if "ops" not in e:
        return f"_failed: {e.get('error')}_\n"
    lines = ["| operation (through the socket) | EC2 calls | which | ms |", "|---|---:|---|---:|"]
    for o in e["ops"]:
        which = ", ".join(f"{k} ×{v}" for k, v in o["calls"].items()) or "–"
        lines.append(f"| {o['op']}{'' if o['ok'] else ' (FAILED)'} | {o['total']} | {which} | {f1(o['ms'])} |")
    rs = e.get("restart")
    if rs:
        which = ", ".join(f"{k} ×{v}" for k, v in rs["calls"].items()) or "none"
        lines.append("")
        lines.append(f"Restart with {e['volumes_for_ls']:,} volumes in state: first Get answered "
                     f"{rs['first_get_ms']:,.0f} ms after spawn{'' if rs['ok'] else ' (FAILED)'}; EC2 calls meanwhile: {which}.")
    if e.get("ls"):
        lines.append("")
        lines.append(f"| listing {e['volumes_for_ls']:,} volumes of this daemon + {e.get('made_elsewhere', 0)} made "
                     f"by another host | ms | volumes listed | EC2 calls |")
        lines.append("|---|---:|---:|---|")
        for x in e["ls"]:
            which = ", ".join(f"{k} ×{v}" for k, v in x["calls"].items()) or "none"
            lines.append(f"| {x['how']}{'' if x['ok'] else ' (FAILED)'} | {f1(x['ms'])} | {x['listed']} | {which} |")
    if "all_listed_after_s" in e:
        lines.append("")
        a = e["all_listed_after_s"]
        lines.append(f"The {e.get('made_elsewhere')} volumes made by another host "
                     + (f"were listed {a} s after the restart (once the first background refresh finished)."
                        if a is not None else "were still not listed 60 s after the restart."))
    warns = [w for w in e.get("daemon_warnings") or [] if "refresh" in w or "time budget" in w]
    if warns:
        lines.append("")
        lines.append("Daemon warnings during the stage:")
        lines.append("")
        lines += [f"    {w}" for w in warns[-2:]]
    if e.get("error"):
        lines.append("")
        lines.append(f"_The stage stopped early: {e['error']}_")
    lines.append("")
    lines.append(f"Binary `{e.get('binary')}` ({e.get('binary_bytes', 0) / 1e6:.1f} MB). Stage time {e.get('stage_secs')} s.")
    lines.append("")
    lines.append("REX-Ray 0.11, side by side (derived from its algorithm in `rexray.md`, not measured):")
    lines.append("")
    return "\n".join(lines) + "\n" + rexray_ebs_table()


def scale_block(s):
    if skipped(s):
        return skip_note("scale", s)
    lines = ["| volumes in state | Mount p50 / p99 (µs) | Unmount p50 / p99 (µs) | daemon CPU per Mount+Unmount (µs) "
             "| Get p50 (µs) | List p50 (ms) | List reply | RSS | first Get after a restart (ms) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for lv in s["levels"]:
        rs = lv.get("restart") or {}
        each = [f1(x) for x in ((rs.get("first_get") or {}).get("each_ms") or [])]
        each += [f"> {rs.get('get_timeout_s', 0) * 1000:,.0f}"] * int(rs.get("first_get_timeouts") or 0)
        lines.append(
            f"| {lv['volumes']:,} | {f0(lv['mount']['p50_us'])} / {f0(lv['mount']['p99_us'])} | "
            f"{f0(lv['unmount']['p50_us'])} / {f0(lv['unmount']['p99_us'])} | {f0(lv.get('cpu_us_per_pair'))} | "
            f"{f0(lv['get']['p50_us'])} | "
            f"{f2(lv['list']['p50_us'] / 1000)} | {lv['list_bytes'] / 1024:,.0f} KiB | {mib(lv['rss']['rss_kib'])} | "
            f"{' / '.join(each) or '–'} |")
    fp = s.get("fsync_probe")
    lines.append("")
    lines.append(f"{s['levels'][0]['mount']['n']} Mount/Unmount pairs per level (a new 64-hex ID each), the levels "
                 "served by one daemon each and measured in turn, pair by pair; then 500 Gets and 10 Lists. "
                 "The restart column is each of 2 successive restarts after the run (the first loads and reconciles "
                 "the state the run left, the second is steady): time from spawn to the first Get answered." + (f" This disk's write + fsync + rename + directory fsync: p50 {f0(fp['p50_us'])} µs, "
                                    f"p99 {f0(fp['p99_us'])} µs." if fp else "")
                 + f" Stage time {s.get('stage_secs')} s.")
    return "\n".join(lines) + "\n"


def footprint_block(f):
    if skipped(f):
        return skip_note("footprint", f)
    st = f["startup"]
    lines = ["| figure | value |", "|---|---:|",
             f"| release binary (stripped, thin LTO) | {f['binary_bytes'] / 1e6:.2f} MB |"]
    if f.get("binary_ebs_bytes"):
        lines.append(f"| release binary with `--features ebs` | {f['binary_ebs_bytes'] / 1e6:.2f} MB |")
    lines += [
        f"| start → socket accepts (median of {st['runs']}; min–max) | {st['listening']['p50_ms']} ms "
        f"({st['listening']['min_ms']}–{st['listening']['max_ms']}) |",
        f"| start → first Plugin.Activate answered | {st['first_activate']['p50_ms']} ms |",
        f"| start → first Get answered | {st['first_get']['p50_ms']} ms |",
        f"| RSS idle (8 volumes) | {mib(f['idle']['rss_kib'])} |",
        f"| RSS after {f['requests']:,} Get (16 connections) | {mib(f['after_get']['rss_kib'])} |",
        f"| RSS after {f['requests'] // 10:,} more List on 64 connections | {mib(f['after_list64']['rss_kib'])} |",
        f"| peak RSS (VmHWM) | {mib(f['after_list64']['hwm_kib'])} |",
        f"| threads | {f['after_settle']['threads']} |",
    ]
    lines.append("")
    lines.append(f"Stage time {f.get('stage_secs')} s.")
    return "\n".join(lines) + "\n"


# The three ways of each step in the csi stage: the CSI call, the tool a shell would run, the syscall.
CSI_STEPS = [
    ("attach", "ControllerPublishVolume", "`losetup --find --show IMG`", "`LOOP_CTL_GET_FREE` + `LOOP_CONFIGURE`"),
    ("stage", "NodeStageVolume", "`mount -t ext4 DEV STAGING`", "`mount(2)`"),
    ("publish", "NodePublishVolume", "`mount --bind STAGING TARGET`", "`mount(2)` `MS_BIND`"),
    ("stage+publish", "**NodeStage + NodePublish**", "**mount + bind**", "**both**"),
    ("up", "all three", "all three", "all three"),
    ("unpublish", "NodeUnpublishVolume", "`umount TARGET`", "`umount2(2)`"),
    ("unstage", "NodeUnstageVolume", "`umount STAGING`", "`umount2(2)`"),
    ("detach", "ControllerUnpublishVolume", "`losetup -d DEV`", "`LOOP_CLR_FD`"),
    ("down", "all three", "all three", "all three"),
]


def pct3(x):
    """p50 / p90 / max in ms."""
    if not x or not x.get("n"):
        return "–"
    return f"{x['p50_ms']:.2f} / {x['p90_ms']:.2f} / {x['max_ms']:.2f}"


def csi_rpc_cells(c):
    """(rpc, label) -> medians over the rounds of p50, p99, calls/s, server CPU per call."""
    cells = {}
    for run in c.get("rpc") or []:
        for name, v in run["rpcs"].items():
            cells.setdefault((name, run["label"]), []).append(v)
    out = {}
    for k, v in cells.items():
        x = {f: med([r.get(f) for r in v]) for f in ("p50_us", "p90_us", "p99_us", "max_us", "calls_per_s")}
        x["n"] = sum(r["n"] for r in v)
        # CPU pooled over the rounds: /proc's 10 ms ticks are coarse next to one round's total
        cpu = [r.get("server_cpu_us_per_call") for r in v]
        x["server_cpu_us_per_call"] = (sum(c * r["n"] for c, r in zip(cpu, v)) / x["n"]
                                       if None not in cpu and x["n"] else None)
        out[k] = x
    return out


def run_line(m, suite=None):
    """One sentence naming the run's machine and source, for a block that may come from a
    partial run (not the run the Machine table describes)."""
    if not m:
        return []
    took = f", suite run time {suite['suite_secs']} s" if suite else ""
    return [f"Run of {m['date']} on {m['cores']} cores ({m.get('cpu') or '?'}), {m.get('mem_gib')} GiB, kernel "
            f"{m['kernel']}, source `{m.get('git')}`{' + uncommitted changes' if m.get('git_dirty') else ''}; "
            f"load average at start {' '.join(m.get('loadavg_at_start') or [])}{took}.", ""]


def csi_block(c, m=None, suite=None):
    if skipped(c):
        return skip_note("csi", c)
    st = c["stage"]
    lines = run_line(m, suite)
    lines += [f"| step ({st['size_gib']} GiB {st['fs']} loop volume, formatted) | CSI call | daemon p50 / p90 / max (ms) "
              "| tool | processes p50 / p90 / max (ms) | syscall | syscalls p50 / p90 / max (ms) | daemon / processes (p50) |",
              "|---|---|---:|---|---:|---|---:|---:|"]
    for key, call, tool, sysc in CSI_STEPS:
        d, p, y = st["csi"].get(key), st["proc"].get(key), st["sys"].get(key)
        ratio = d["p50_ms"] / p["p50_ms"] if d and p and p["p50_ms"] else None
        b = "**" if key == "stage+publish" else ""
        lines.append(f"| {b}{key}{b} | {call} | {b}{pct3(d)}{b} | {tool} | {b}{pct3(p)}{b} | {sysc} | {pct3(y)} | "
                     f"{b}{f2(ratio)}{b} |")
    f, cr = st.get("first") or {}, st.get("create") or {}
    lines.append("")
    lines.append(f"| a new volume (×{cr.get('n', '?')}) | p50 (ms) | max (ms) |")
    lines.append("|---|---:|---:|")
    lines.append(f"| CreateVolume ({st['size_gib']} GiB sparse image) | {f2((cr.get('p50_us') or 0) / 1000)} | "
                 f"{f2((cr.get('max_us') or 0) / 1000)} |")
    for key, label in (("attach", "first ControllerPublishVolume"), ("stage", "first NodeStageVolume (probe + mkfs.ext4 + mount)"),
                       ("publish", "first NodePublishVolume"), ("down", "first unpublish + unstage + detach")):
        x = f.get(key) or {}
        lines.append(f"| {label} | {f2(x.get('p50_ms'))} | {f2(x.get('max_ms'))} |")
    cells = csi_rpc_cells(c)
    lines.append("")
    lines.append("| RPC (one connection, one call at a time) | ours p50 / p99 (µs) | ours calls/s | ours server CPU µs/call "
                 "| bare tonic p50 / p99 (µs) | bare calls/s | bare CPU µs/call | ours / bare (calls/s) |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in ("GetPluginInfo", "Probe", "NodeGetInfo"):
        o, b = cells.get((name, "ours")), cells.get((name, "bare"))
        if not o:
            continue
        b = b or {}
        ratio = o["calls_per_s"] / b["calls_per_s"] if b.get("calls_per_s") else None
        lines.append(f"| {name} | {f0(o['p50_us'])} / {f0(o['p99_us'])} | {f0(o['calls_per_s'])} | "
                     f"{f1(o['server_cpu_us_per_call'])} | {f0(b.get('p50_us'))} / {f0(b.get('p99_us'))} | "
                     f"{f0(b.get('calls_per_s'))} | {f1(b.get('server_cpu_us_per_call'))} | {f2(ratio)} |")
    warns = c.get("daemon_warnings") or []
    lines.append("")
    lines.append(f"{st['samples']} cycles of each kind, interleaved with the order rotating"
                 + (" (stopped early by the time bound)" if st.get("stopped_early") else "")
                 + f"; first cycles on {cr.get('n', '?')} new volumes. RPCs: {c.get('calls')} calls per cell after "
                 f"{c.get('warmup')} of warm-up, {c.get('rounds')} rounds (medians of the rounds), ours and bare "
                 "alternating first. Server CPU per call is pooled over the rounds. Bare tonic: `rxbench csi-serve`, tonic 0.14 with 2 workers answering the daemon's "
                 f"own replies. Daemon warnings or errors in the stage: {len(warns)}. "
                 f"Stage time {c.get('stage_secs')} s.")
    return "\n".join(lines) + "\n"


def pm(x):
    """p50 / max of a {"p50_ms", "max_ms"} figure."""
    return f"{f0(x['p50_ms'])} / {f0(x['max_ms'])}" if x else "–"


def calls_text(calls):
    """"AttachVolume 1, DescribeVolumes 3 (by name 1, by ID 2)": the emulator counts each
    DescribeVolumes also under "DescribeVolumes by name|by ID|other"."""
    parts = []
    for k, v in sorted(calls.items()):
        if " " in k:
            continue
        kinds = [f"{kk.split(' ', 1)[1]} {vv}" for kk, vv in sorted(calls.items()) if kk.startswith(k + " ")]
        parts.append(f"{k} {v}" + (f" ({', '.join(kinds)})" if kinds else ""))
    return ", ".join(parts) or "none"


def describe_calls(calls):
    return sum(v for k, v in calls.items() if k.startswith("Describe") and " " not in k)


def latency_goals(x):
    """(overhead met?, calls met?, their texts) of the ebs-latency stage against issue 16's goals."""
    singles, conc = x["single"], {c["mounts"]: c for c in x["concurrent"]}
    worst_p50 = max(max(r["mount_overhead"]["p50_ms"], r["mount_overhead_over_attach"]["p50_ms"]) for r in singles)
    worst_max = max(max(r["mount_overhead"]["max_ms"], r["mount_overhead_over_attach"]["max_ms"]) for r in singles)
    over = "; ".join(f"Δ = {r['delta_s']:g} s: {pm(r['mount_overhead_over_attach'])} after the attach completed, "
                     f"{pm(r['mount_overhead'])} as time less Δ" for r in singles)
    one, many = describe_calls(conc[1]["calls"]), describe_calls(conc[32]["calls"])
    ratio = many / one if one else None
    calls = (f"32 Mounts: {many} describe calls ({calls_text(conc[32]['calls'])}); one Mount: {one} "
             f"({calls_text(conc[1]['calls'])}): {f2(ratio)}×")
    return worst_p50 <= 100 and worst_max <= 250, ratio is not None and ratio <= 2, over, calls


def ebs_latency_block(x, m=None, suite=None):
    if skipped(x):
        return skip_note("ebs-latency", x)
    lines = run_line(m, suite)
    lines += ["| Δ (attach) | Mount overhead after the attach completed, p50 / max (ms) | Mount time less Δ, p50 / max (ms) "
              "| EC2 asked after the attach completed, p50 / max (ms) | last Unmount overhead after the detach completed "
              f"(Δd = {x['detach_delta_s']:g} s), p50 / max (ms) | last Unmount time less Δd, p50 / max (ms) "
              "| EC2 calls of one Mount | of one Unmount | REX-Ray's schedule, predicted overhead (ms) "
              "| EBS CSI driver's schedule, predicted (ms) |",
              "|---:|---:|---:|---:|---:|---:|---|---|---:|---:|"]
    for r in x["single"]:
        lines.append(f"| {r['delta_s']:g} s | **{pm(r['mount_overhead_over_attach'])}** | {pm(r['mount_overhead'])} | "
                     f"{pm(r['confirmed_after'])} | {pm(r['unmount_overhead_over_detach'])} | {pm(r['unmount_overhead'])} | "
                     f"{calls_text(r['mount_calls'])} | {calls_text(r['unmount_calls'])} | "
                     f"{r['rexray_predicted_ms']:,} | {r['ebs_csi_predicted_ms']:,} |")
    lines += ["", "| Mounts at once (Δ = 2 s) | overhead after the attach completed, p50 / max (ms) "
              "| time less Δ, p50 / max (ms) | EC2 calls of the Mounts | describe calls "
              "| their last Unmounts at once: overhead after the detach, p50 / max (ms) | EC2 calls of the Unmounts |",
              "|---:|---:|---:|---|---:|---:|---|"]
    for c in x["concurrent"]:
        lines.append(f"| {c['mounts']} | {pm(c['overhead_over_attach'])} | {pm(c['overhead'])} | {calls_text(c['calls'])} | "
                     f"**{c['describe_calls']}** | {pm(c['unmount_overhead_over_detach'])} | {calls_text(c['unmount_calls'])} |")
    cr = x.get("create")
    if cr:
        lines += ["", f"A Create while EC2 shows the new volume `creating` for Δc = {x['create_delta_s']:g} s: "
                  f"{pm(cr['overhead_over_create'])} ms (p50 / max) after it became available, "
                  f"EC2 calls {calls_text(cr['calls'])}."]
    ok_time, ok_calls, over, calls = latency_goals(x)
    lines += ["", "| goal (issue \"EBS at its limits\") | result | met? |", "|---|---|---|",
              f"| Mount overhead ≤ 100 ms p50 and ≤ 250 ms max at every Δ (both measures) | {over} | {yes(ok_time)} |",
              f"| 32 concurrent Mounts ≤ 2× the EC2 calls of one (describe calls; AttachVolume has no batch form) "
              f"| {calls} | {yes(ok_calls)} |"]
    errors = x.get("emulator_errors") or []
    lines += ["", f"{x['rounds']} Mounts per Δ, one after another; the predicted columns put each schedule's next poll "
              "after Δ (REX-Ray: 0.1 s, doubling; the EBS CSI driver: 1 s × 1.8ⁿ) and count only the noticing. "
              f"Emulator errors: {len(errors)}{': ' + '; '.join(errors) if errors else ''}. "
              f"Stage time {x.get('stage_secs')} s."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------


def summary_block(out):
    p, d, lp, e, s, f, c = (load(out, x) for x in ("protocol", "docker", "loop", "ebs", "scale", "footprint", "csi"))
    lat = load(out, "ebs-latency")
    rows = []

    def row(figure, goal, result, met):
        rows.append(f"| {figure} | {goal} | {result} | {yes(met)} |")

    if not skipped(p):
        c = protocol_cells(p).get(("get", 16))
        if c:
            row("Get throughput at 16 connections, vs a bare hyper server", "≥ 80 %",
                f"{c['ratio'] * 100:.0f} % ({f0(c['ours_rps'])} vs {f0(c['bare_rps'])} req/s)", c["ratio"] >= 0.8)
            row("Get p99 at 16 connections", "< 2 ms", f"{c['ours_p99'] / 1000:.2f} ms (bare server: "
                f"{c['bare_p99'] / 1000:.2f} ms)", c["ours_p99"] < 2000)
        for op, goal in (("get", 1.3), ("path", 1.3), ("list", 1.5)):
            x = protocol_cells(p).get((op, 16))
            if x and x["ours_cpu"] and x["bare_cpu"]:
                r = x["ours_cpu"] / x["bare_cpu"]
                was = f"; before: {x['before_cpu']:.1f} µs" if x.get("before_cpu") else ""
                row(f"{op.capitalize()} server CPU per request at 16 connections, vs bare hyper"
                    + (" (8 volumes)" if op == "list" else ""), f"≤ {goal}×",
                    f"{r:.2f}× ({x['ours_cpu']:.1f} vs {x['bare_cpu']:.1f} µs{was})", r <= goal)
    else:
        row("Get throughput / p99 at 16 connections", "≥ 80 % / < 2 ms", "not measured", None)
    if not skipped(d):
        for k, label in (("inspect", "`docker volume inspect`"), ("ls", "`docker volume ls`"),
                         ("run", "`docker run --rm -v vol:/data img true`")):
            x = d.get(k)
            if x:
                extra = f"; a zero-work plugin: {x['bare_ratio']:.2f}×" if x.get("bare_ratio") else ""
                row(f"{label}, vfs vs `local`", "≤ 1.05×", f"{x['ratio']:.2f}× ({x['ours_p50_ms']:.1f} vs "
                    f"{x['local_p50_ms']:.1f} ms{extra})", x["ratio"] <= 1.05)
    else:
        row("Docker commands, vfs vs `local`", "≤ 1.05×", "not measured", None)
    if not skipped(lp):
        m = lp["median_ms"]
        r = m["d_create"] / m["b_create"]
        row("16 GiB loop volume: create + first mount vs bare sequence", "≤ 1.2× and < 300 ms",
            f"{r:.2f}×, {m['d_create']:.0f} ms", r <= 1.2 and m["d_create"] < 300)
        for key, label in (("remount", "remount"), ("unmount", "unmount")):
            r = m["d_" + key] / m["b_" + key]
            row(f"16 GiB loop volume: {label} vs bare sequence", "≤ 1.2×", f"{r:.2f}× ({m['d_' + key]:.0f} vs "
                f"{m['b_' + key]:.0f} ms)", r <= 1.2)
    else:
        row("loop volumes vs bare sequence", "≤ 1.2×", "not measured", None)
    if not skipped(e) and e.get("ops"):
        by = {o["op"]: o for o in e["ops"]}

        def n(label):
            o = by.get(label)
            return "–" if o is None else str(o["total"])
        row("EBS: EC2 calls per create / mount existing / unmount / inspect / ls",
            "state them; REX-Ray (derived): ≥4 / ≥5 / ≥4 / 1 / 1",
            f"{n('create (size 1)')} / {n('mount existing (attach)')} / {n('unmount (detach)')} / "
            f"{n('get while mounted')} (first after start: {n('get / inspect')}) / {n('list')}", None)
        run = [by.get(k) for k in ("get while mounted", "mount existing (attach)", "unmount (detach)")]
        if all(run):
            row("EBS: EC2 calls per `docker run --rm -v vol:/data` (Get ×3, Mount, Unmount)",
                "state them; REX-Ray (derived): ≥12",
                str(3 * run[0]["total"] + run[1]["total"] + run[2]["total"]), None)
        dl = [x for x in e.get("ls") or [] if x["how"].startswith("docker")]
        if dl:
            row(f"EBS: `docker volume ls` with {e['volumes_for_ls']:,} volumes (+{e.get('made_elsewhere', 0)} "
                "made by another host)", "state time and calls; REX-Ray (derived): 1 unpaginated DescribeVolumes",
                f"{med([x['ms'] for x in dl]):.0f} ms, {dl[-1]['listed']} listed, "
                f"{sum(sum(x['calls'].values()) for x in dl)} EC2 calls in {len(dl)} runs", None)
    else:
        row("EBS control plane", "state calls per operation", "not measured: " + (
            (e or {}).get("skipped") or (e or {}).get("error") or "stage not run"), None)
    if not skipped(lat):
        ok_time, ok_calls, over, calls = latency_goals(lat)
        row("EBS: Mount overhead over an attach of Δ (§4c, latency emulator)", "≤ 100 ms p50, ≤ 250 ms max", over, ok_time)
        row("EBS: EC2 describe calls of 32 Mounts at once vs one (§4c)", "≤ 2×", calls, ok_calls)
    elif lat is not None:
        row("EBS latency (§4c)", "≤ 100 ms / ≤ 2×", "not measured: " + lat["skipped"], None)
    if not skipped(s):
        lv = s["levels"]
        a, b = lv[0], lv[-1]
        rm, ru = b["mount"]["p50_us"] / a["mount"]["p50_us"], b["unmount"]["p50_us"] / a["unmount"]["p50_us"]
        row(f"Mount / Unmount p50 with {b['volumes']:,} vs {a['volumes']:,} volumes in state", "flat (≤ 1.5×)",
            f"{rm:.2f}× / {ru:.2f}× ({b['mount']['p50_us'] / 1000:.2f} / {b['unmount']['p50_us'] / 1000:.2f} ms)",
            rm <= 1.5 and ru <= 1.5)
    if not skipped(f):
        row("Resident memory idle", "< 15 MiB", mib(f["idle"]["rss_kib"]), f["idle"]["rss_kib"] < 15 * 1024)
        row(f"Resident memory after {f['requests']:,} requests", "< 15 MiB", mib(f["after_get"]["rss_kib"]),
            f["after_get"]["rss_kib"] < 15 * 1024)
        st = f["startup"]["listening"]["p50_ms"]
        row("Start to a listening socket", "< 20 ms", f"{st} ms", st < 20)
        row("Release binary size", "–", f"{f['binary_bytes'] / 1e6:.2f} MB", None)
    if not skipped(c):
        st = c["stage"]
        dd, pp, yy = (st[k]["stage+publish"]["p50_ms"] for k in ("csi", "proc", "sys"))
        row(f"CSI NodeStage + NodePublish, {st['size_gib']} GiB loop volume (formatted), vs `mount` + `mount --bind` (§6)",
            "state it", f"{dd:.2f} vs {pp:.2f} ms ({dd / pp:.2f}×; syscalls alone {yy:.2f} ms)", None)
        du, pu = st["csi"]["up"]["p50_ms"], st["proc"]["up"]["p50_ms"]
        row("… with ControllerPublish (the loop attach) vs `losetup` + `mount` + `mount --bind`", "state it",
            f"{du:.2f} vs {pu:.2f} ms ({du / pu:.2f}×)", None)
        cells = csi_rpc_cells(c)
        pr, ni = cells.get(("Probe", "ours")), cells.get(("NodeGetInfo", "ours"))
        bp = cells.get(("Probe", "bare")) or {}
        if pr and ni:
            row("CSI Probe / NodeGetInfo round trip, one connection (§6)", "state it",
                f"p50 {pr['p50_us']:.0f} / {ni['p50_us']:.0f} µs, {pr['calls_per_s']:,.0f} / {ni['calls_per_s']:,.0f} "
                f"calls/s (bare tonic Probe: {f0(bp.get('p50_us'))} µs)", None)
    elif c is not None:
        row("CSI front (§6)", "state it", "not measured: " + c["skipped"], None)
    return "| figure | goal | result | met? |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"


def blocks(out):
    return {
        "summary": summary_block(out),
        "machine": machine_block(load(out, "machine"), load(out, "suite")),
        "protocol": protocol_block(load(out, "protocol")) if load(out, "protocol") is not None else None,
        "docker": docker_block(load(out, "docker")) if load(out, "docker") is not None else None,
        "loop": loop_block(load(out, "loop")) if load(out, "loop") is not None else None,
        "ebs": ebs_block(load(out, "ebs")) if load(out, "ebs") is not None else None,
        "scale": scale_block(load(out, "scale")) if load(out, "scale") is not None else None,
        "footprint": footprint_block(load(out, "footprint")) if load(out, "footprint") is not None else None,
        "csi": csi_block(load(out, "csi"), load(out, "machine"), load(out, "suite")) if load(out, "csi") is not None else None,
        "ebs-latency": (ebs_latency_block(load(out, "ebs-latency"), load(out, "machine"), load(out, "suite"))
                        if load(out, "ebs-latency") is not None else None),
    }


# The stages of a whole run; a run without some of them is partial (see merge_summary).
ALL_STAGES = ("protocol", "docker", "loop", "ebs", "scale", "footprint", "csi", "ebs-latency")


def table_rows(block):
    """The data rows of a markdown table, keyed by their first cell."""
    rows = {}
    for line in block.splitlines():
        if line.startswith("| ") and not line.startswith("| figure |"):
            rows[line.split(" | ")[0]] = line
    return rows


def merge_summary(old, new):
    """A partial run's summary: the old rows, those this run measured replaced, new ones appended."""
    fresh = table_rows(new)
    lines, seen = [], set()
    for line in old.splitlines():
        key = line.split(" | ")[0] if line.startswith("| ") else None
        if key in fresh:
            lines.append(fresh[key])
            seen.add(key)
        else:
            lines.append(line)
    lines += [v for k, v in fresh.items() if k not in seen]
    return "\n".join(lines) + "\n"


def partial_summary(out):
    """The summary rows of the stages this run has (no "not measured" rows for the others)."""
    rows = table_rows(summary_block(out))
    ran = {x for x in ALL_STAGES if load(out, x) is not None}
    missing = {
        "protocol": "Get throughput / p99", "docker": "Docker commands", "loop": "loop volumes vs",
        "ebs": "EBS control plane", "csi": "CSI front", "ebs-latency": "EBS latency",
    }
    return "\n".join(v for k, v in rows.items()
                     if not any(k.startswith("| " + m) and st not in ran for st, m in missing.items())) + "\n"


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    out = sys.argv[1]
    bl = blocks(out)
    text = "".join(f"### {k}\n\n{v}\n" for k, v in bl.items() if v)
    with open(os.path.join(out, "tables.md"), "w") as f:
        f.write(text)
    if "--write" in sys.argv:
        target = sys.argv[sys.argv.index("--write") + 1]
        with open(target) as f:
            doc = f.read()
        partial = [x for x in ALL_STAGES if load(out, x) is None]
        if partial:
            # A partial run leaves the other stages' summary rows and the Machine table (which
            # describes the whole run the document quotes) as they are; its own machine goes
            # with its own blocks (the csi block names it).
            print(f"report: partial run (no {' '.join(partial)}): merging the summary, keeping the Machine table",
                  file=sys.stderr)
            bl = dict(bl, machine=None)
            m = re.search(r"<!-- generated:summary -->\n(.*?)<!-- /generated:summary -->", doc, re.S)
            if m:
                bl["summary"] = merge_summary(m.group(1), partial_summary(out))
        for name, body in bl.items():
            if body is None:
                continue
            pat = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)", re.S)
            doc, n = pat.subn(lambda m: m.group(1) + body + m.group(2), doc)
            if n == 0:
                print(f"report: no block <!-- generated:{name} --> in {target}", file=sys.stderr)
        with open(target, "w") as f:
            f.write(doc)
        print(f"report: updated {target}", file=sys.stderr)
    print(text)


if __name__ == "__main__":
    main()
