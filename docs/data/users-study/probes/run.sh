cd /work/wt-ustudy
B="env OMP_WAIT_POLICY=PASSIVE PYTHONPATH=src .venv/bin/python -m crepe train --dataset fashion-mnist --data-dir /work/shared/data --method full --privacy-unit user --users synthetic --user-count 1000 --users-per-round 100 --held-out-classes 3 --threads 1 --epochs 20 --eval-every 20 --momentum 0.9 --target-epsilon 8"
name=$1; shift
$B --out /tmp/probe/$name "$@" > /tmp/probe/$name.log 2>&1
