#!/usr/bin/env bash
# Trains the shipped demo model from nothing on a 2-core CPU and measures the paper's claims at
# toy scale (about 50 minutes). Usage: scripts/train_demo.sh   (writes out/demo, as the
# demo_* recipes in masqclip/recipes/ say)
#   1. procedural scenes: 25 colour x pattern thing classes (18 base / 7 novel) over 4 stuff,
#      and camera frames: frames of moving sequences at the size a 640x480 frame enters the
#      model (85 x 64), for stage 2 as the demo CLIP receives them (docs/demo_model.md)
#   2. a small CLIP, contrastive on captioned scenes and camera views (it knows all 25 classes)
#   3. stage 1 on base annotations only: teacher, then a student with pseudo-masks
#   4. stage 2 (MasQ-Tuning) on base classes, on the student's and on the teacher's proposals
#   5. evaluation on held-out scenes (all / base / novel) and the packaged checkpoint, which is
#      also evaluated on camera-sized frames: 640x480 scenes and held-out sequences
set -euo pipefail
cd "$(dirname "$0")/.."
out=out/demo
masqclip=.venv/bin/masqclip
python=.venv/bin/python

$python scripts/synth_demo_data.py "$out/data" --scenes 4000 --camera-frames 4000
$python scripts/synth_demo_data.py "$out/data_clipview" --scenes 4000 --camera-frames 4000 \
  --clip-view
$masqclip synth "$out/val" --num-images 200 --seed 1
$masqclip synth "$out/test" --num-images 300 --seed 2
# Camera-sized test sets (the sequences' seeds are never trained on, synth_demo_data.py).
$masqclip synth "$out/test_640x480" --num-images 100 --seed 2 --size 640x480
$masqclip synth "$out/test_sequence11" --sequence --seed 11
$python scripts/synth_sequence_frames.py "$out/test_sequences" --seeds 11-40 --step 30

# CLIP and the proposer do not depend on each other: train them side by side, a core each.
$masqclip train-clip --recipe demo_clip train.num_threads=1 &
$masqclip train stage1 --recipe demo_stage1 train.num_threads=1 &
wait
# The distillation ablation: the teacher trained as long as teacher + student together.
$masqclip train stage1 --recipe demo_stage1 --out "$out/teacher_only" train.steps=4000 \
  student.rounds=0 train.num_threads=1 &
$masqclip train stage2 --recipe demo_stage2 --out "$out/stage2_student" train.num_threads=1 &
wait
$masqclip train stage2 --recipe demo_stage2 --out "$out/stage2_teacher" \
  model.init="$out/stage1/teacher.pt" train.num_threads=1 &
$masqclip train stage2 --recipe demo_stage2 --out "$out/stage2_student_clipinit" \
  model.q_proj_init=clip train.num_threads=1 &
wait

# (a) the MaskCLIP-style baseline: mask tokens with CLIP's own q-projection, no tuning.
$python -c "
from masqclip.checkpoint import save_checkpoint
from masqclip.factory import build_model
network, config = build_model(None, checkpoint='$out/stage1/teacher.pt',
                              clip_weights='$out/clip/clip.pt', q_proj_init='clip')
save_checkpoint('$out/untuned.pt', network, config)"
$python scripts/package_demo_model.py "$out/stage2_student/model.pt" "$out/masqclip_demo.pt.gz"

evaluate() {  # NAME CHECKPOINT TASKS [DATA_ROOT]
  $masqclip eval --checkpoint "$2" --data-root "${4:-$out/test}" --format panoptic \
    --annotations annotations/panoptic.json --split split.json --tasks "$3" \
    --out "$out/metrics_$1.json"
}
evaluate untuned "$out/untuned.pt" instance,semantic,panoptic
evaluate tuned_teacher "$out/stage2_teacher/model.pt" instance,semantic,panoptic
evaluate tuned_student "$out/masqclip_demo.pt.gz" instance,semantic,panoptic
evaluate tuned_student_clipinit "$out/stage2_student_clipinit/model.pt" instance,semantic,panoptic
evaluate teacher "$out/stage1/teacher.pt" proposals
evaluate teacher_only "$out/teacher_only/model.pt" proposals
evaluate student "$out/stage1/model.pt" proposals
for set in test_640x480 test_sequence11 test_sequences; do
  evaluate "camera_$set" "$out/masqclip_demo.pt.gz" instance,semantic,panoptic "$out/$set"
done
evaluate camera_example_sequence "$out/masqclip_demo.pt.gz" instance,semantic,panoptic \
  examples/sequence
$python scripts/demo_table.py "$out" | tee "$out/results.md"
echo "ship it: cp $out/masqclip_demo.pt.gz masqclip/weights/"
