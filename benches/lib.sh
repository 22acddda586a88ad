# Helpers the comparison scripts (ab_compare.sh, security_cost.sh) source.

# The number after "key": in a one-line JSON object (distro-bench's summary); empty if absent.
field() { sed -n "s/.*\"$2\":\([-0-9.eE+]*\).*/\1/p" <<<"$1"; }

# The median of the numbers on stdin, one a line (the lower middle of an even count).
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
