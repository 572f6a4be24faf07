# shellcheck shell=sh
# The in-sandbox shell library: functions that run inside every sandbox under /bin/sh (busybox
# ash, dash or bash), so POSIX only. The server writes this file to LIB_PATH (paths.py) when the
# sandbox is created, and again whenever it is found missing; every ``podman exec`` of ours
# sources it through BOOTSTRAP (helpers.py) and calls one function. User input arrives as
# positional arguments or on stdin, never inside script text. agent/sandbox-agent.c writes the
# same records: a change to a record's format changes both, and parse_report
# (command_records.py) reads them.
# Checked by shellcheck (tests/unit/test_shell_library.py); each exception says why.
report() {  # $1 command dir, $2 output cap, [$3 $4 stdout/stderr offsets]: a framed report (see parse_report)
  d=$1; cap=$2; oo=${3:-0}; eo=${4:-0}
  printf 'MCPSB2\n'
  if [ -f "$d/exit" ]; then printf '%s\n' "$(tr -dc 0-9 < "$d/exit" | head -c 9)"; else echo; fi
  if [ -e "$d/timed_out" ]; then echo 1; elif [ -e "$d/oom_killed" ]; then echo oom; else echo 0; fi
  if [ -f "$d/exit" ]; then echo 0
  elif kill -0 "$(tr -dc 0-9 < "$d/pid" 2>/dev/null | head -c 9)" 2>/dev/null; then echo 1
  else echo 0; fi
  printf '%s\n' "$(tr -dc 0-9 < "$d/started" 2>/dev/null | head -c 16)"
  printf '%s\n' "$(tr -dc 0-9 < "$d/finished" 2>/dev/null | head -c 16)"
  o=/var/lib/mcp-sandbox/output/${d##*/}
  so=$(wc -c < "$o.stdout" 2>/dev/null | tr -dc 0-9); so=${so:-0}
  se=$(wc -c < "$o.stderr" 2>/dev/null | tr -dc 0-9); se=${se:-0}
  # Ranges the agent punched out to bound the files: a cursor inside one moves to its end,
  # and a slice stops where one begins.
  { read -r dso deo < "$d/stdout_dropped"; } 2>/dev/null || { dso=0; deo=0; }
  { read -r dse dee < "$d/stderr_dropped"; } 2>/dev/null || { dse=0; dee=0; }
  case "$dso$deo$dse$dee" in *[!0-9]*) dso=0; deo=0; dse=0; dee=0;; esac
  dso=${dso:-0}; deo=${deo:-0}; dse=${dse:-0}; dee=${dee:-0}
  if [ "$oo" -ge "$dso" ] && [ "$oo" -lt "$deo" ]; then oo=$deo; fi
  if [ "$eo" -ge "$dse" ] && [ "$eo" -lt "$dee" ]; then eo=$dee; fi
  lo=$((so - oo)); [ "$lo" -gt 0 ] || lo=0
  le=$((se - eo)); [ "$le" -gt 0 ] || le=0
  if [ "$lo" -gt "$cap" ]; then no=$cap; else no=$lo; fi
  if [ "$le" -gt "$cap" ]; then ne=$cap; else ne=$le; fi
  if [ "$oo" -lt "$dso" ] && [ $((oo + no)) -gt "$dso" ]; then no=$((dso - oo)); fi
  if [ "$eo" -lt "$dse" ] && [ $((eo + ne)) -gt "$dse" ]; then ne=$((dse - eo)); fi
  printf '%s\n%s\n%s\n%s\n' "$so" "$se" "$no" "$ne"
  printf '%s %s %s %s %s %s\n' "$oo" "$eo" "$dso" "$deo" "$dse" "$dee"
  tail -c +$((oo + 1)) "$o.stdout" 2>/dev/null | head -c "$no"
  tail -c +$((eo + 1)) "$o.stderr" 2>/dev/null | head -c "$ne"
}

oom_kills() {  # the sandbox's count of OOM kills (cgroup v1 or v2), empty if unknown
  sed -n 's/^oom_kill //p' /sys/fs/cgroup/memory/memory.oom_control 2>/dev/null \
    || sed -n 's/^oom_kill //p' /sys/fs/cgroup/memory.events 2>/dev/null
}

now_ms() {  # wall-clock milliseconds: date's %N, else when a file of ours ($1) was written now
  n=$(date +%s%N 2>/dev/null)
  case $n in ''|*[!0-9]*) ;; *) echo "${n%??????}"; return 0;; esac
  # shellcheck disable=SC2046  # split into its fields on purpose
  true > "$1" && set -- $(stat -c '%Y %y' "$1" 2>/dev/null)  # 1795937555 2026-11-29 07:32:35.295173381 +0000
  f=${3#*.}; f=${f%"${f#???}"}
  case "$1$f" in ''|*[!0-9]*) echo "$(date +%s)000";; *) echo "$1$f";; esac
}

prune_records() {  # the newest 1,000 records of finished commands stay (as prune_records in the agent)
  set -- /run/mcp-sandbox/commands/cmd_*
  [ $# -gt 1100 ] || return 0
  for d in "$@"; do
    [ -e "$d/exit" ] || continue
    s=0; read -r s < "$d/started"; echo "$s $d"
  done | sort -n | head -n $(($# - 1000)) | while read -r s d; do  # the oldest start first
    o=/var/lib/mcp-sandbox/output/${d##*/}; echo "$d $o.stdout $o.stderr $o.stdin"
  done | xargs rm -rf
}

run() {  # $1 command id, $2 timeout s, $3 output cap, $4 unused (the server's start), $5 flags
  # (1 stdin kept open, 2 a terminal, 4 stdin from $o.stdin); stdin: the command
  d=/run/mcp-sandbox/commands/$1; o=/var/lib/mcp-sandbox/output/$1; tmo=$2; sf=${5:-0}; a=/run/mcp-sandbox/agent
  # A terminal needs the agent (a shell cannot make one).
  if [ $((sf & 2)) -ne 0 ] && [ ! -x "$a" ]; then exit 122; fi
  mkdir -p "$d" /var/lib/mcp-sandbox/output && cat > "$d/command" && now_ms "$d/clock" > "$d/started" \
    && true > "$o.stdout" && true > "$o.stderr" || exit 121
  inp=/dev/null; [ $((sf & 4)) -ne 0 ] && inp=$o.stdin
  if [ $((sf & 3)) -ne 0 ]; then  # a FIFO anyone may write (write_stdin below, the agent)
    mkfifo -m 600 "$d/stdin" || exit 121
    [ $((sf & 2)) -eq 0 ] || true > "$d/tty" || exit 121
  fi
  (
    # The environment the server gives every command (an egress proxy, say).
    if [ -r /var/lib/mcp-sandbox/env ]; then
      # shellcheck disable=SC2163  # kv is NAME=value: export sets it
      while IFS= read -r kv; do case "$kv" in ?*=*) export "$kv" ;; esac; done < /var/lib/mcp-sandbox/env
    fi
    # Its own process group, so a timeout stops the command's children too. Through the agent's
    # wrap when it is here: a shell's background job ignores INT and QUIT, which wrap undoes,
    # and wrap holds a kept-open stdin or runs a terminal.
    wm="plain"; [ $((sf & 1)) -ne 0 ] && wm="hold"; [ $((sf & 2)) -ne 0 ] && wm="tty"
    if [ -x "$a" ]; then set -- "$a" wrap "$wm" "$d"; else set --; fi
    if [ $((sf & 3)) -ne 0 ] && [ ! -x "$a" ]; then  # hold the FIFO open here until stdin_closed
      ( exec 3<> "$d/stdin"; while [ ! -e "$d/stdin_closed" ] && [ ! -e "$d/exit" ]; do sleep 0.2 3>&- 2>/dev/null || sleep 1 3>&-; done ) \
        < /dev/null > /dev/null 2>&1 &
      inp=$d/stdin
    fi
    if [ "$(wc -c < "$d/command")" -le 100000 ]; then
      setsid "$@" /bin/sh -c "$(cat "$d/command")" < "$inp" > "$o.stdout" 2> "$o.stderr" &
    else  # too long for one argument: run it as a script
      setsid "$@" /bin/sh "$d/command" < "$inp" > "$o.stdout" 2> "$o.stderr" &
    fi
    p=$!
    echo "$p" > "$d/pid"
    ob=$(oom_kills)
    (
      sleep "$tmo" & s=$!
      trap 'kill $s 2>/dev/null; exit 0' TERM
      wait $s
      true > "$d/timed_out"
      g=$(tr -dc 0-9 < "$d/pgid" 2>/dev/null)  # a terminal's session (see the agent's wrap)
      kill -TERM -"$p" ${g:+-"$g"} 2>/dev/null; sleep 2; kill -KILL -"$p" ${g:+-"$g"} 2>/dev/null
    ) < /dev/null > /dev/null 2>&1 &
    w=$!
    wait "$p"; rc=$?
    kill "$w" 2>/dev/null
    oa=$(oom_kills)
    if [ "$rc" -ne 0 ] && [ -n "$ob" ] && [ -n "$oa" ] && [ "$oa" -gt "$ob" ]; then echo $((oa - ob)) > "$d/oom_killed"; fi
    now_ms "$d/clock" > "$d/finished"
    echo "$rc" > "$d/exit.tmp" && mv "$d/exit.tmp" "$d/exit"
  ) < /dev/null > /dev/null 2>&1 &
  # The subshell records the result even if this exec session (or the server) goes away.
  wait $!
  report "$d" "$3"
  prune_records
}

read_command() {  # $1 command id, $2 output cap, $3 $4 stdout/stderr offsets
  if [ -d "/run/mcp-sandbox/commands/$1" ]; then report "/run/mcp-sandbox/commands/$1" "$2" "$3" "$4"; else echo MCPSB-NONE; fi
}

write_stdin() {  # $1 command id, $2 1 to close after, $3 length; stdin: the data.
  # "ok WRITTEN TTY STDOUT_SIZE STDERR_SIZE" (the sizes before the write) or "error WHY"
  d=/run/mcp-sandbox/commands/$1
  if [ ! -d "$d" ]; then echo "error no-such-command"
  elif [ ! -p "$d/stdin" ]; then echo "error not-kept-open"
  elif [ -e "$d/stdin_closed" ]; then echo "error closed"
  elif [ -f "$d/exit" ]; then echo "error finished"
  else
    o=/var/lib/mcp-sandbox/output/$1
    so=$(wc -c < "$o.stdout" 2>/dev/null | tr -dc 0-9); se=$(wc -c < "$o.stderr" 2>/dev/null | tr -dc 0-9)
    # A command that does not read its input leaves a full pipe: give up after 2 s (how much of the
    # data it took is then unknown: the agent, which writes without blocking, can tell).
    if command -v timeout > /dev/null 2>&1; then timeout 2 cat > "$d/stdin"; else cat > "$d/stdin"; fi \
      || { echo "error not-reading"; return 0; }
    if [ "$2" = 1 ]; then
      if [ -e "$d/tty" ]; then printf '\004' > "$d/stdin"; fi  # end-of-file on a terminal: ^D
      true > "$d/stdin_closed"
    fi
    t=0; [ -e "$d/tty" ] && t=1
    echo "ok $3 $t ${so:-0} ${se:-0}"; return 0
  fi
  cat > /dev/null
}

signal_command() {  # $1 command id, $2 signal number: "ok" or "error WHY"
  d=/run/mcp-sandbox/commands/$1
  [ -d "$d" ] || { echo "error no-such-command"; return 0; }
  g=$(tr -dc 0-9 < "$d/pgid" 2>/dev/null | head -c 9)
  [ -n "$g" ] || g=$(tr -dc 0-9 < "$d/pid" 2>/dev/null | head -c 9)
  if [ -f "$d/exit" ] || [ -z "$g" ]; then echo "error finished"; return 0; fi
  if kill -"$2" -"$g" 2>/dev/null || kill -"$2" "$g" 2>/dev/null; then echo ok; else echo "error finished"; fi
}

read_file() {  # $1 path, $2 offset, $3 length: "ok SIZE N" and N bytes, or "error WHY"
  p=$1
  if [ ! -e "$p" ]; then
    if [ -L "$p" ]; then echo "error broken-link"; else echo "error missing"; fi; return 0
  fi
  if [ -d "$p" ]; then echo "error directory"; return 0; fi
  if [ ! -f "$p" ]; then echo "error special"; return 0; fi
  exec 3< "$p" 2>/dev/null || { echo "error unreadable"; return 0; }
  s=$(stat -L -c %s /proc/self/fd/3 2>/dev/null | tr -dc 0-9)
  [ -n "$s" ] || { echo "error unreadable"; return 0; }
  n=$((s - $2)); [ "$n" -gt 0 ] || n=0; [ "$n" -le "$3" ] || n=$3
  echo "ok $s $n"
  tail -c +$(($2 + 1)) <&3 | head -c "$n"
}

list_files() {  # $1 path, $2 depth, $3 max: "ok" and lines "MODE(hex) SIZE MTIME ./PATH", or "error WHY"
  p=$1
  if [ ! -e "$p" ]; then
    if [ -L "$p" ]; then echo "error broken-link"; else echo "error missing"; fi; return 0
  fi
  [ -d "$p" ] || { echo "error not-directory"; return 0; }
  # shellcheck disable=SC2015  # either failing is "unreadable"
  cd "$p" 2>/dev/null && [ -r . ] || { echo "error unreadable"; return 0; }
  echo ok
  find . -mindepth 1 -maxdepth "$2" -exec stat -c '%f %s %Y %n' {} + 2>/dev/null | head -n $(($3 + 1))
}

list_commands() {  # lines of: id TAB exit TAB timed_out TAB alive TAB started TAB command preview
  cd /run/mcp-sandbox/commands 2>/dev/null || return 0
  for d in cmd_*; do
    [ -d "$d" ] || continue
    e=; [ -f "$d/exit" ] && e=$(tr -dc 0-9 < "$d/exit" | head -c 9)
    t=0; [ -e "$d/timed_out" ] && t=1
    a=0; [ -f "$d/exit" ] || { kill -0 "$(tr -dc 0-9 < "$d/pid" 2>/dev/null | head -c 9)" 2>/dev/null && a=1; }
    s=$(tr -dc 0-9 < "$d/started" 2>/dev/null | head -c 16)
    printf '%s\t%s\t%s\t%s\t%s\t' "$d" "$e" "$t" "$a" "$s"
    head -c 200 "$d/command" | tr '\n\t\r' '   '
    echo
  done
}

link_file() {  # $1 path, $2 size cap, $3 file id: one line, a verdict and for a file its size
  p=$1
  if [ ! -e "$p" ]; then
    if [ -L "$p" ]; then echo broken-link; else echo missing; fi; return 0
  fi
  if [ -d "$p" ]; then echo directory; return 0; fi
  if [ ! -f "$p" ]; then echo special; return 0; fi
  if [ ! -r "$p" ]; then echo unreadable; return 0; fi
  s=$(stat -L -c %s "$p" 2>/dev/null | tr -dc 0-9)
  [ -n "$s" ] || { echo unreadable; return 0; }
  if [ "$s" -gt "$2" ]; then echo "too-big $s"; return 0; fi
  # shellcheck disable=SC2015  # either failing is "state-unwritable"
  mkdir -p /var/lib/mcp-sandbox/links && printf '%s' "$p" > "/var/lib/mcp-sandbox/links/$3" || { echo state-unwritable; return 0; }
  echo "file $s"
}

list_links() {  # NUL-separated pairs of file id and path
  cd /var/lib/mcp-sandbox/links 2>/dev/null || return 0
  for f in *; do [ -f "$f" ] && printf '%s\0%s\0' "$f" "$(head -c 4096 "$f")"; done
}

serve_file() {  # $1 path: "ok SIZE" and exactly SIZE bytes, or one line saying why not
  [ -f "$1" ] || { echo gone; return 0; }
  exec 3< "$1" || { echo unreadable; return 0; }
  s=$(stat -L -c %s /proc/self/fd/3 2>/dev/null | tr -dc 0-9)
  [ -n "$s" ] || { echo unreadable; return 0; }
  echo "ok $s"
  exec cat <&3  # the server reads exactly SIZE bytes
}
