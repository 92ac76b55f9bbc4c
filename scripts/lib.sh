# Shared by scripts/demo and scripts/bench: a private containerd in a temp dir, the busybox
# image imported offline, and teardown. Source it; it sets T, NS, CTR and a cleanup trap.

cryo_shim_path() { # $1: cargo profile dir name (debug|release)
  local target="${CARGO_TARGET_DIR:-$PWD/target}"
  echo "$target/$1/containerd-shim-cryo-v2"
}

start_containerd() { # $1: the shim binary
  T=$(mktemp -d /tmp/cryo-demo-XXXXXX)
  NS="cryo-demo-$$"
  mkdir -p "$T/bin" "$T/cni/bin" "$T/cni/net.d"
  ln -s "$1" "$T/bin/containerd-shim-cryo-v2"
  cat >"$T/config.toml" <<EOT
version = 2
root = "$T/root"
state = "$T/state"
[grpc]
  address = "$T/c.sock"
[ttrpc]
  address = "$T/c.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$T/opt"
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.cryo]
    runtime_type = "io.containerd.cryo.v2"
EOT
  PATH="$T/bin:$PATH" containerd --config "$T/config.toml" >"$T/containerd.log" 2>&1 &
  CONTAINERD_PID=$!
  CTR=(ctr -a "$T/c.sock" -n "$NS")
  trap stop_containerd EXIT
  for _ in $(seq 100); do "${CTR[@]}" version >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "containerd did not start; see $T/containerd.log" >&2
  return 1
}

import_busybox() { # builds a busybox OCI image offline and imports it as $IMAGE
  IMAGE=docker.io/library/busybox-cryo:demo
  local r="$T/rootfs" o="$T/oci"
  mkdir -p "$r/bin" "$r/etc" "$r/tmp" "$o/blobs/sha256"
  cp /bin/busybox "$r/bin/" && chroot "$r" /bin/busybox --install -s /bin
  echo 'root:x:0:0:root:/root:/bin/sh' >"$r/etc/passwd"; echo 'root:x:0:' >"$r/etc/group"
  tar --numeric-owner --sort=name --mtime=@0 -C "$r" -cf "$T/layer.tar" .
  local ld ls cd cs md ms
  ld=$(sha256sum "$T/layer.tar" | cut -d' ' -f1); ls=$(stat -c %s "$T/layer.tar")
  mv "$T/layer.tar" "$o/blobs/sha256/$ld"
  printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$ld" >"$T/config.json"
  cd=$(sha256sum "$T/config.json" | cut -d' ' -f1); cs=$(stat -c %s "$T/config.json"); mv "$T/config.json" "$o/blobs/sha256/$cd"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' "$cd" "$cs" "$ld" "$ls" >"$T/manifest.json"
  md=$(sha256sum "$T/manifest.json" | cut -d' ' -f1); ms=$(stat -c %s "$T/manifest.json"); mv "$T/manifest.json" "$o/blobs/sha256/$md"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s"}}]}' "$md" "$ms" "$IMAGE" >"$o/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$o/oci-layout"
  tar -C "$o" -cf "$T/image.tar" oci-layout index.json blobs
  "${CTR[@]}" image import "$T/image.tar" >/dev/null
}

stop_containerd() {
  set +e
  if [ -n "${CTR:-}" ]; then
    for t in $("${CTR[@]}" task ls -q 2>/dev/null); do "${CTR[@]}" task kill -a -s SIGKILL "$t" >/dev/null 2>&1; done
    sleep 0.3
    for t in $("${CTR[@]}" task ls -q 2>/dev/null); do "${CTR[@]}" task delete "$t" >/dev/null 2>&1; done
    for c in $("${CTR[@]}" container ls -q 2>/dev/null); do "${CTR[@]}" container delete "$c" >/dev/null 2>&1; done
    for i in $("${CTR[@]}" image ls -q 2>/dev/null); do "${CTR[@]}" image rm "$i" >/dev/null 2>&1; done
  fi
  [ -n "${CONTAINERD_PID:-}" ] && kill "$CONTAINERD_PID" 2>/dev/null && wait "$CONTAINERD_PID" 2>/dev/null
  for d in /sys/fs/cgroup/*/"$NS"; do [ -d "$d" ] && rmdir "$d" 2>/dev/null; done
  rmdir "/run/containerd/runc/$NS" 2>/dev/null # runc's shim leaves its (empty) state root
  grep -o " $T[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf "$T"
}
