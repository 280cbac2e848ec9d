"""Knowledge distillation: losses and the training loop shared by teacher, baseline and student."""
