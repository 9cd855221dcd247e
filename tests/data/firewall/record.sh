#!/bin/bash
# Re-record the firewall fixtures: each ruleset is loaded into a throwaway network namespace
# (never the host's own firewall) and read back with the same commands vncaudit runs.
# Usage (root): bash tests/data/firewall/record.sh   — rewrites *.iptables/*.ip6tables/*.nft.json
# and, when ufw is installed, ufw-real.* (ufw runs in a private mount namespace on copies of
# /etc/ufw, /lib/ufw and /etc/default/ufw, inside the throwaway network namespace: the host's
# ufw configuration and firewall are never touched).
set -euo pipefail
SELF=$(realpath "$0")
cd "$(dirname "$SELF")"
if [ "${1:-}" = "--in-sandbox" ]; then
  SB=$2; NS=$3
  mkdir -p "$SB/etc" "$SB/lib"
  cp -a /etc/ufw "$SB/etc/ufw"; cp -a /lib/ufw "$SB/lib/ufw"; cp /etc/default/ufw "$SB/default"
  : >"$SB/etc/ufw/sysctl.conf"                               # no sysctl changes
  sed -i 's/^IPT_MODULES=.*/IPT_MODULES=""/' "$SB/default"  # no module loading
  mount --bind "$SB/etc/ufw" /etc/ufw
  mount --bind "$SB/lib/ufw" /lib/ufw
  mount --bind "$SB/default" /etc/default/ufw
  u() { ip netns exec "$NS" ufw "$@" >/dev/null; }
  u --force enable
  u limit 22/tcp
  u allow from 192.168.1.0/24 to any port 5900 proto tcp
  u allow 5901:5903/tcp
  u deny 5904,5905/tcp
  u reject 5906
  u allow in on eth1 to any port 5907 proto tcp
  u allow WWW
  u allow from 10.9.0.0/16
  u allow out 5950/tcp
  ip netns exec "$NS" ufw status verbose >ufw-real.status
  ip netns exec "$NS" iptables -S >ufw-real.iptables
  ip netns exec "$NS" ip6tables -S >ufw-real.ip6tables
  exit 0
fi
NS="vafwrec$$"
cleanup() { ip netns del "$NS" 2>/dev/null || true; }
trap cleanup EXIT

fresh() { cleanup; ip netns add "$NS"; }
ipt() { ip netns exec "$NS" iptables "$@"; }
ip6t() { ip netns exec "$NS" ip6tables "$@"; }
nftx() { ip netns exec "$NS" nft "$@"; }
save() {  # save NAME: what `iptables -S`, `ip6tables -S`, `nft -j list ruleset` print now
  ipt -S >"$1.iptables"; ip6t -S >"$1.ip6tables"; nftx -j list ruleset >"$1.nft.json"
  echo >>"$1.nft.json"
}

# 1. Nothing configured: every policy ACCEPT.
fresh; save empty

# 2. Default-drop host: loopback, established, SSH, VNC only from a LAN; IPv6 left open.
fresh
ipt -A INPUT -i lo -j ACCEPT
ipt -A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
ipt -A INPUT -p tcp --dport 22 -j ACCEPT
ipt -A INPUT -s 10.0.0.0/8 -p tcp --dport 5900 -j ACCEPT
ipt -A INPUT -s 192.168.7.0/24 -p tcp -m multiport --dports 5901,5902 -j ACCEPT
ipt -A INPUT -p tcp --dport 5903 -j REJECT --reject-with tcp-reset
ipt -P INPUT DROP
save policy-drop-v4only

# 3. User chains, port ranges, negated interface, RETURN, LOG; IPv6 with its own chain.
fresh
ipt -N VNC-IN
ipt -N LOGDROP
ipt -A LOGDROP -j LOG --log-prefix "vnc-drop "
ipt -A LOGDROP -j DROP
ipt -A INPUT -m state --state ESTABLISHED -j ACCEPT
ipt -A INPUT -p tcp -m tcp --dport 5900:5910 -j VNC-IN
ipt -A VNC-IN -i lo -j RETURN
ipt -A VNC-IN -s 198.18.0.0/15 -j RETURN
ipt -A VNC-IN -p tcp --dport 5905 -j ACCEPT
ipt -A VNC-IN ! -i lo -j LOGDROP
ipt -A INPUT -p tcp --dport 5999 -j DROP
ip6t -N VNC6
ip6t -A INPUT -i lo -j ACCEPT
ip6t -A INPUT -p tcp -m multiport --dports 5900:5910,5999 -j VNC6
ip6t -A VNC6 -s fd00::/8 -j ACCEPT
ip6t -A VNC6 -j REJECT --reject-with icmp6-port-unreachable
save user-chains

# 4. ufw-shaped chains (the layout `ufw enable` creates; ufw itself is not run here).
fresh
for t in iptables ip6tables; do
  mask=255.255.255.255; [ "$t" = ip6tables ] && mask=ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff
  sed "s/@MASK@/$mask/" <<'RULES' | ip netns exec "$NS" "$t-restore"
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:ufw-before-input - [0:0]
:ufw-after-input - [0:0]
:ufw-reject-input - [0:0]
:ufw-user-input - [0:0]
:ufw-user-limit - [0:0]
:ufw-user-limit-accept - [0:0]
-A INPUT -j ufw-before-input
-A INPUT -j ufw-after-input
-A INPUT -j ufw-reject-input
-A ufw-before-input -i lo -j ACCEPT
-A ufw-before-input -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A ufw-before-input -m conntrack --ctstate INVALID -j DROP
-A ufw-before-input -j ufw-user-input
-A ufw-user-input -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -m recent --set --name DEFAULT --mask @MASK@ --rsource
-A ufw-user-input -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -m recent --update --seconds 30 --hitcount 6 --name DEFAULT --mask @MASK@ --rsource -j ufw-user-limit
-A ufw-user-input -p tcp -m tcp --dport 22 -j ufw-user-limit-accept
-A ufw-user-input -p tcp -m multiport --dports 5900:5910 -j ACCEPT
-A ufw-user-input -i eth9 -p tcp -m tcp --dport 5990 -j ACCEPT
-A ufw-user-limit -j REJECT
-A ufw-user-limit-accept -j ACCEPT
COMMIT
RULES
done
ipt -A ufw-user-input -s 203.0.113.0/24 -p tcp -m tcp --dport 5920 -j ACCEPT
ip6t -A ufw-user-input -p tcp -m tcp --dport 5920 -j DROP
save ufw-chains

# 5. Native nftables: inet table, policy drop, vmap, named set, ranges, per-family sources.
fresh
nftx -f - <<'NFT'
table inet host {
  set vncports { type inet_service; flags interval; elements = { 5900-5903, 5950 } }
  chain input {
    type filter hook input priority 0; policy drop;
    iifname "lo" accept
    ct state vmap { established : accept, related : accept, invalid : drop }
    tcp dport 22 accept
    tcp dport @vncports ip saddr 198.18.0.0/15 accept
    tcp dport { 5904, 5905 } ip6 saddr fd00::/8 accept
    tcp dport 5906 reject with tcp reset
    meta nfproto ipv6 tcp dport 5907 accept
    tcp dport 5908-5910 jump vnc
  }
  chain vnc {
    ip saddr 192.0.2.10 return
    tcp dport 5909 counter accept
  }
}
NFT
save nft-inet-drop

# 6. iptables-nft rules as nft sees them (xt matches), next to a native table.
fresh
ipt -A INPUT -i lo -j ACCEPT
ipt -A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
ipt -A INPUT -p tcp --dport 5900 -j DROP
nftx add table inet extra
nftx 'add chain inet extra input { type filter hook input priority 10; policy accept; }'
nftx add rule inet extra input tcp dport 5901 drop
save iptables-nft-mixed

# 7. Real ufw: its `status verbose` and the iptables/ip6tables chains it loads.
if command -v ufw >/dev/null; then
  fresh
  SB=$(mktemp -d)
  unshare -m --propagation private bash "$SELF" --in-sandbox "$SB" "$NS"
  rm -rf "$SB"
fi
