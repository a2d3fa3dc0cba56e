#!/bin/bash
# CPU µs per request of an NGINX proxy (master+worker) with its `mirror` module $1 (on|off).
# Setup used for docs/BENCHMARKS.md (in /tmp/ngmirror, all on 127.0.0.1):
#   upstreams.conf: nginx on core 1 with two `return 200` servers, 19181 (primary) and 19182 (shadow)
#   proxy-on.conf / proxy-off.conf: nginx, worker_processes 1, listening on 19180, upstream blocks with
#     keepalive 64; `location /` proxies to primary, with `mirror /mirror;` only in proxy-on.conf;
#     `location = /mirror { internal; proxy_pass http://shadow$request_uri; }`.
# Start the upstreams (`taskset -c 1 nginx -p /tmp/ngmirror -c /tmp/ngmirror/upstreams.conf`), then
# run `benches/load/nginx-mirror-measure.sh off` and `... on`, alternating.
cd /tmp/ngmirror
taskset -c 0 nginx -p /tmp/ngmirror -c /tmp/ngmirror/proxy-$1.conf
sleep 0.3
pids=$(pgrep -f "nginx.*proxy-$1.conf"; pgrep -P $(cat proxy.pid))
ticks() { for p in $pids; do awk '{print $14+$15}' /proc/$p/stat; done | paste -sd+ | bc; }
taskset -c 1 wrk -t1 -c64 -d2s http://127.0.0.1:19180/ > /dev/null
t0=$(ticks)
n=$(taskset -c 1 wrk -t1 -c64 -d8s http://127.0.0.1:19180/ | awk '/requests in/ {print $1}')
t1=$(ticks)
echo "nginx mirror $1: $n requests, $(echo "scale=1; ($t1-$t0)*10000/$n" | bc) CPU us/request"
kill $(cat proxy.pid); sleep 0.3
