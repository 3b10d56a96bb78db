#!/usr/bin/env bash
# Runs `anticollapse bench step` and the JAX / PyTorch peers of the same step alternately
# for N rounds and prints each one's ms/step (median of the run), the median over rounds,
# and the ratios peer ms / our ms (higher = we are faster) — of the medians, and the median of
# the ratios within each round — with our in-run sgemm rate.
#
#   bench/peers/compare.sh [--rounds N] [--threads T] [--python PY] [--peers LIST] [-- step options]
#   bench/peers/compare.sh --rounds 3 -- --encoder 64,256,256 --projector 256,512,512 --batch 128
#   bench/peers/compare.sh --rounds 3 --peers torch,torch_cl -- --encoder resnet --image 3,32,32 \
#       --stem-channels 32 --stages 32,64,128,256 --blocks 2 --projector 256,1024,1024 --batch 128 \
#       --optimizer sgd --steps 5 --warmup 2
#   bench/peers/compare.sh --rounds 3 --peers torch,torch_compile -- --encoder vit --image 1,28,28 \
#       --patch-size 4 --width 192 --depth 6 --heads 3 --projector 192,1024,1024 --steps 5 --warmup 2
#
# Step options (default: the reference shape) are passed unchanged to every run:
# --encoder, --projector, --batch, --steps, --warmup (and for --encoder resnet: --image,
# --stem-channels, --stem-stride, --stages, --blocks, --optimizer). Peers (default jax,torch;
# jax is MLP only): jax, torch, torch_cl (torch in channels_last), torch_compile (torch.compile). A peer whose package does
# not import under PY (default: $PEERS_PYTHON, else /tmp/peers-venv/bin/python, else python3)
# is skipped.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
rounds=3
threads=2
peer_list=jax,torch
py=${PEERS_PYTHON:-}
if [[ -z $py ]]; then
    if [[ -x /tmp/peers-venv/bin/python ]]; then py=/tmp/peers-venv/bin/python; else py=python3; fi
fi

while (($#)); do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --python) py=$2; shift 2 ;;
        --peers) peer_list=$2; shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) break ;;
    esac
done
# The reference shape, for each option not given.
step_args=()
for default in --encoder=784,1024,1024 --projector=1024,2048,2048 --batch=256 --steps=20 --warmup=3; do
    [[ " $* " == *" ${default%%=*} "* ]] || step_args+=("${default%%=*}" "${default#*=}")
done
step_args+=("$@")

ours=$root/.build/release/anticollapse
if [[ ! -x $ours ]]; then
    echo "building $ours" >&2
    (cd "$root" && swift build -c release --product anticollapse) >&2
fi

peers=()
for peer in ${peer_list//,/ }; do
    module=${peer%_cl}; module=${module%_compile}
    if [[ $module == jax && " ${step_args[*]} " =~ " --encoder "(resnet|vit|convnet)" " ]]; then
        echo "skipping jax: jax_step.py has the MLP step only" >&2; continue
    fi
    if "$py" -c "import $module" 2>/dev/null; then peers+=("$peer"); else echo "skipping $peer: not importable by $py" >&2; fi
done
# The script and extra options of a peer.
peer_command() {
    case $1 in
        torch_cl) echo "$here/torch_step.py --channels-last" ;;
        torch_compile) echo "$here/torch_step.py --compile" ;;
        *) echo "$here/${1}_step.py" ;;
    esac
}

log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT

# Last JSON line of a run's output.
json_of() { grep '^{' "$1" | tail -n 1; }
# A field of a JSON object on stdin.
field() { "$py" -c "import json,sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }

echo "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p' | head -n 1); threads $threads"
echo "step: ${step_args[*]}"
for ((r = 1; r <= rounds; r++)); do
    "$ours" bench step --json --threads "$threads" "${step_args[@]}" > "$log/ours.$r"
    line="round $r: ours $(json_of "$log/ours.$r" | field medianMilliseconds | xargs printf '%.1f') ms"
    for peer in "${peers[@]}"; do
        # shellcheck disable=SC2046
        "$py" $(peer_command "$peer") --json --threads "$threads" "${step_args[@]}" > "$log/$peer.$r"
        line+=", $peer $(json_of "$log/$peer.$r" | field medianMilliseconds | xargs printf '%.1f') ms"
    done
    echo "$line"
done

# Median over rounds of each run's median ms/step.
median_of() {
    local name=$1 r
    for ((r = 1; r <= rounds; r++)); do json_of "$log/$name.$r"; done |
        "$py" -c "import json,statistics,sys; print(statistics.median(json.loads(l)['medianMilliseconds'] for l in sys.stdin))"
}

ours_ms=$(median_of ours)
last=$(json_of "$log/ours.$rounds")
# Median over rounds of the ratio peer ms / our ms within each round: runs next to each other
# share the machine's state (this VM has slow spells that last seconds to minutes).
ratio_of() {
    local name=$1 r
    for ((r = 1; r <= rounds; r++)); do
        echo "$(json_of "$log/ours.$r" | field medianMilliseconds) $(json_of "$log/$name.$r" | field medianMilliseconds)"
    done | "$py" -c "import statistics,sys; print(statistics.median(float(p)/float(o) for o,p in (l.split() for l in sys.stdin)))"
}

printf '%-8s %10s %10s %12s %16s\n' who 'ms/step' 'samples/s' 'peer/ours' 'per-round ratio'
batch=$(field batch <<< "$last")
printf '%-8s %10.1f %10.0f %12s %16s\n' ours "$ours_ms" "$("$py" -c "print($batch/($ours_ms/1e3))")" '1.00' '1.00'
for peer in "${peers[@]}"; do
    ms=$(median_of "$peer")
    printf '%-8s %10.1f %10.0f %12.2f %16.2f\n' "$peer" "$ms" "$("$py" -c "print($batch/($ms/1e3))")" \
        "$("$py" -c "print($ms/$ours_ms)")" "$(ratio_of "$peer")"
done
printf 'ours, every round: %s\n' "$(for ((r = 1; r <= rounds; r++)); do json_of "$log/ours.$r" | field sgemmGFLOPS | xargs printf '%.0f '; done)GFLOP/s sgemm (1024^3)"
printf 'ours, last round: sgemm %.1f GFLOP/s (1024^3), %.1f GFLOP/s (%s); achieved %.1f GFLOP/s = %.2f of sgemm; BLAS threads %s\n' \
    "$(field sgemmGFLOPS <<< "$last")" "$(field sgemmLargestGFLOPS <<< "$last")" "$(field largestGEMM <<< "$last")" \
    "$(field achievedGFLOPS <<< "$last")" "$(field fractionOfSGEMM <<< "$last")" "$(field blasThreads <<< "$last")"
