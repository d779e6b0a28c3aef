#!/usr/bin/env python3
"""Sums a `perf record` profile of claimgate (bench/load.py --profile DIR) into where the CPU
goes: kernel (network stack, scheduler, syscall entry), allocator, copies, hyper, tokio,
TLS/crypto, and claimgate's own stages. Self time only, so the buckets add up to 100 %.

    bench/profile-summary.py DIR/get1k-claimgate.perf [CPU_US_PER_REQUEST]

With the CPU time per request (from the load table) each bucket is also shown in µs.
"""

import re
import subprocess
import sys

# First match wins: (bucket, dso pattern, symbol pattern).
RULES = [
    ("kernel: scheduler, wake-ups, context switches", r"kernel", r"finish_task_switch|schedule|try_to_wake_up|_raw_spin_unlock_irqrestore|ttwu|enqueue|dequeue|pick_next|irqentry_exit|update_curr|futex|select_task_rq|sysvec_reschedule"),
    ("kernel: TCP/IP send and receive", r"kernel", r"tcp|ip_|inet|skb|sock|net_|napi|__dev_queue|loopback|netif|bbr|sk_|dst_|copy_.*iter|_copy_|nf_|__netif|process_backlog|ip4|validate_xmit|rcv"),
    ("kernel: epoll and syscall entry/exit", r"kernel", r"epoll|ep_|do_syscall|syscall|entry_|fdget|fput|__x64|vfs_|rw_verify|security_|ksys_|__fsnotify|do_writev|import_iovec|__check_object_size|__virt_addr_valid|check_heap|_copy_from_user|read_tsc|ktime"),
    ("kernel: other", r"kernel", r"."),
    ("allocator (malloc/free)", r".", r"malloc|free|_int_|cfree|realloc|tcache|arena|mi_|__rust_alloc|__rust_dealloc|alloc::alloc|RawVec|finish_grow"),
    ("memcpy/memmove/memcmp", r".", r"mem(move|cpy|set|cmp|chr)|__memcmp|memchr"),
    ("crypto (SHA-256, HMAC, AES: aws-lc)", r".", r"aws_lc|sha256|hmac|HMAC|aes"),
    ("tokio runtime and timers", r".", r"tokio::"),
    ("hyper / hyper-util (HTTP/1 parse, encode, dispatch, pool)", r".", r"hyper|httparse|want::"),
    ("http crate (HeaderMap, names, URIs)", r".", r"^http::|<http::|HeaderMap|HdrName|header::name|StandardHeader"),
    ("serde_json (audit record)", r".", r"serde_json|serde::|serde_core"),
    ("claimgate: audit", r".", r"claimgate::audit"),
    ("claimgate: authenticate (identity)", r".", r"claimgate::identity"),
    ("claimgate: sign (SigV4)", r".", r"claimgate::(upstream::(s3_signer|sign)|sigv4)"),
    ("claimgate: classify + authorize", r".", r"claimgate::(classify|policy)"),
    ("claimgate: pipeline, context, bodies, server", r".", r"claimgate::"),
    ("libc other", r"libc", r"."),
    ("other (std, fmt, closures)", r".", r"."),
]


def main():
    path = sys.argv[1]
    per_request = float(sys.argv[2]) if len(sys.argv) > 2 else None
    out = subprocess.run(
        ["perf", "report", "-i", path, "--no-children", "--sort", "dso,sym", "-g", "none", "--stdio"],
        capture_output=True, text=True, check=True,
    ).stdout
    buckets = {name: 0.0 for name, _, _ in RULES}
    for line in out.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*)", line)
        if not m:
            continue
        pct, dso, sym = float(m.group(1)), m.group(2), m.group(3)
        for name, dso_re, sym_re in RULES:
            if re.search(dso_re, dso) and re.search(sym_re, sym):
                buckets[name] += pct
                break
    total = sum(buckets.values()) or 1
    print(f"| where ({path.rsplit('/', 1)[-1]}) | share |" + (" µs/request |" if per_request else ""))
    print("|---|---:|" + ("---:|" if per_request else ""))
    for name, pct in sorted(buckets.items(), key=lambda kv: -kv[1]):
        if pct < 0.05:
            continue
        share = pct / total
        row = f"| {name} | {share * 100:.1f} % |"
        if per_request:
            row += f" {share * per_request:.1f} |"
        print(row)


if __name__ == "__main__":
    main()
