#!/usr/bin/env bash
# A long run of the release daemon, as a line would run it, with the disturbances a line
# sees: 1280x1024 frames at 15 frames/s to a local mosquitto, the broker restarted every
# 5 minutes, the config edited (a threshold) every 10 minutes. At the end it reports
# resident memory and open files over time, alarms stored vs delivered (none may be
# missing), results published vs frames inspected, and the daemon's last stats.
#
# usage: benches/soak.sh [MINUTES]   (default 60; needs mosquitto and mosquitto_sub)
# Output: target/soak/ (report.txt, samples.csv, the daemon's log, what was received).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-60}
out=target/soak
rm -rf "$out" && mkdir -p "$out/frames" "$out/broker" "$out/state"
chmod 777 "$out/broker"
cargo build --release --quiet
bin=target/release/inspectd

# Frames: the camera-sized frame (every NEU class in it) 5 times, then 10 NEU patches
# images (200x200), so
# alarms are raised and cleared all the time, not raised once.
for i in $(seq -w 0 4); do cp ../shared/datasets/frames/line_1280x1024.png "$out/frames/a$i.png"; done
n=0
for f in ../shared/datasets/neu/IMAGES/patches_*.png; do
  [ -f "$f" ] || continue
  cp "$f" "$out/frames/b$(printf %02d $n).${f##*.}"; n=$((n + 1)); [ $n -lt 10 ] || break
done

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
  || shuf -i 20000-60000 -n 1)
cat > "$out/broker/mosquitto.conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
persistence true
persistence_location $PWD/$out/broker/
max_queued_messages 100000
EOF
broker() { mosquitto -c "$out/broker/mosquitto.conf" >>"$out/broker/log" 2>&1 & echo $! >"$out/broker/pid"; sleep 0.5; }
broker

cat > "$out/soak.toml" <<EOF
[station]
site = "soak"
line = "l1"
station = "s1"
[capture]
source = "dir"
path = "frames"
loop = true
fps = 15
[model]
path = "$PWD/models/neu_det.onnx"
[decide]
default_threshold = 0.30
[alarm]
window = 5
raise = 3
clear = 1
[mqtt]
port = $port
stats_interval_s = 10.0
[state]
dir = "state"
[log]
format = "json"
EOF

root=inspectd/soak/l1/s1
# A subscriber with a persistent session (QoS 1), restarted if it ever exits.
( while true; do
    mosquitto_sub -p "$port" -q 1 -c -i soak-sub -v -t "$root/alarm" -t "$root/stats" -t "$root/result/ok" \
      >>"$out/received.txt" 2>>"$out/sub.log" || true
    sleep 0.5
  done ) &
sub_loop=$!
sleep 1
"$bin" run --config "$out/soak.toml" 2>"$out/daemon.log" &
daemon=$!
trap 'kill $daemon $sub_loop 2>/dev/null; pkill -f "soak-sub" 2>/dev/null; kill $(cat $out/broker/pid) 2>/dev/null' EXIT

echo "t_s,rss_kb,fds,threads" >"$out/samples.csv"
start=$(date +%s)
end=$((start + minutes * 60))
last_broker=$start
last_edit=$start
threshold=0.30
while [ "$(date +%s)" -lt "$end" ]; do
  sleep 10
  now=$(date +%s)
  kill -0 $daemon 2>/dev/null || { echo "the daemon died" | tee -a "$out/report.txt"; exit 1; }
  echo "$((now - start)),$(awk '/VmRSS/{print $2}' /proc/$daemon/status),$(ls /proc/$daemon/fd | wc -l),$(ls /proc/$daemon/task | wc -l)" >>"$out/samples.csv"
  if [ $((now - last_broker)) -ge 300 ]; then
    kill "$(cat "$out/broker/pid")"; wait "$(cat "$out/broker/pid")" 2>/dev/null || true
    sleep 5
    broker
    last_broker=$now
    echo "$((now - start)) s: broker restarted" >>"$out/events.txt"
  fi
  if [ $((now - last_edit)) -ge 600 ]; then
    if [ "$threshold" = 0.30 ]; then threshold=0.31; else threshold=0.30; fi
    sed -i "s/^default_threshold = .*/default_threshold = $threshold/" "$out/soak.toml"
    last_edit=$now
    echo "$((now - start)) s: config edited (default_threshold = $threshold)" >>"$out/events.txt"
  fi
done

kill -TERM $daemon
wait $daemon || true
sleep 3
stored=$(grep -c '"message":"Alarm."' "$out/daemon.log" || true)
grep '"message":"Alarm."' "$out/daemon.log" | sed 's/.*"id":\([0-9]*\).*/\1/' | sort -n | uniq >"$out/stored_ids.txt"
grep "^$root/alarm " "$out/received.txt" | sed 's/.*"id":\([0-9]*\).*/\1/' | sort -n | uniq >"$out/delivered_ids.txt"
missing=$(comm -23 "$out/stored_ids.txt" "$out/delivered_ids.txt" | wc -l)
reloads=$(grep -c 'Applied the new thresholds' "$out/daemon.log" || true)
last_stats=$(grep "^$root/stats " "$out/received.txt" | tail -1 | cut -d' ' -f2-)
first=$(sed -n 2p "$out/samples.csv"); last=$(tail -1 "$out/samples.csv")
{
  echo "soak: $minutes min at 15 frames/s, 1280x1024 and 200x200 frames, $(grep -c 'broker restarted' "$out/events.txt" || true) broker restarts, $reloads config reloads applied"
  echo "CPU: $(lscpu | sed -n 's/^Model name: *//p')"
  echo "RSS (kB), open fds, threads: first sample $first; last sample $last (t_s,rss_kb,fds,threads)"
  echo "RSS max: $(tail -n +2 "$out/samples.csv" | cut -d, -f2 | sort -n | tail -1) kB"
  echo "alarms stored: $stored; distinct ids delivered: $(wc -l <"$out/delivered_ids.txt"); stored but not delivered: $missing"
  echo "last stats: $last_stats"
  echo "errors logged: $(grep -c '"level":"ERROR"' "$out/daemon.log" || true); warnings: $(grep -c '"level":"WARN"' "$out/daemon.log" || true)"
} | tee "$out/report.txt"
[ "$missing" -eq 0 ]
