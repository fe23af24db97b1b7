"""Training: contrastive CLIP pretraining (demo), stage 1 progressive distillation of the
proposer, stage 2 MasQ-Tuning of the mask tokens, and evaluation. Each entry point has a
``main(argv)``; ``masqclip.training.cli`` is the ``masqclip train`` command."""
