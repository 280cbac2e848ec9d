"""The commented pipeline.yaml that `compress init` writes (also examples/digits/pipeline.yaml)."""

PIPELINE_TEMPLATE = """\
# compress pipeline: teacher -> KD student -> ONNX -> engines -> benchmark -> report
# Run it with:  compress run pipeline.yaml      (results in runs/<name>/)
name: digits
seed: 0
# threads: 1            # torch threads for training; 1 when other jobs share the cores

data:
  source: digits          # digits (bundled with scikit-learn) | npz | imagefolder | manifest | hf | webdataset
  # path: data/train.npz  #   | package.module:function; npz (arrays x, y), a folder per class, a CSV/JSONL, ...
  # val_path: images/val  # a separate val set of the same kind (else val_fraction of path)
  # image_size: 224       # image files: resize (eval_resize: 256 resizes the shorter side, then crops)
  val_fraction: 0.2       # seeded, stratified split
  normalize: true         # per-channel mean/std from the train split

teacher:
  model: cnn              # mlp | cnn | resnet8 | resnet20 | resnet32 | resnet8x4 | resnet32x4
  kwargs: {channels: [32, 64, 128]}    #   | torchvision:NAME | package.module:factory
  # checkpoint: teacher.pt             # a trained teacher (state_dict), or train it here:
  train: {epochs: 8, batch_size: 64, optimizer: adamw, lr: 0.003, weight_decay: 0.0001}

student:
  model: cnn
  kwargs: {channels: [8, 16, 32]}

stages:
  baseline: {}            # the student alone (same budget, no teacher): the report shows the KD gain
  distill:                # Hinton KD: alpha * KD(T) + (1 - alpha) * cross-entropy
    epochs: 15
    batch_size: 64
    optimizer: adamw
    lr: 0.005
    temperature: 4.0
    alpha: 0.7
    # recipe: patient      # random views seen by teacher and student alike, 3x the epochs (Beyer et al. 2022)
    # search: {trials: 20, budget: 10m}   # Optuna over loss, temperature, alpha, lr; the baseline gets the same
    # losses:             # or a weighted family instead of alpha (kd dkd lskd dist mse fitnet at ce):
    #   - {name: kd, weight: 0.9, temperature: 4}
    #   - {name: ce, weight: 0.1}
    #   - {name: fitnet, weight: 1.0, student: layers.6, teacher: layers.6}   # features by module path
  # quantize: {mode: qat, epochs: 3, lr: 0.0001, target: cpu}   # NNCF int8 (ptq | qat with KD); cpu | tensorrt
  export: {opset: 17, dynamic_batch: true, atol: 0.001}
  build:                  # backend:precision; onnxruntime | openvino (fp32 fp16 int8) | tensorrt | triton
    targets: [onnxruntime:fp32, openvino:fp32]
  benchmark:
    batch_sizes: [1, 32]
    rounds: 3             # fresh loads per artifact, interleaved: each p50 gets a ± (how far a rerun may land)
  report: {}
  # deploy:                # ship the recommended artifact and measure it on the device (over SSH)
  #   targets: [ssh://user@edge-box/opt/models]   # | jetson://user@host/path | local:/path
  #   known_hosts: known_hosts                    # strict host key checking against this file

gates:                    # a failed gate makes `compress run` exit 3 (after writing the report)
  max_accuracy_drop: 0.03 # top-1, as a fraction (0.03 = 3 points)
  # min_speedup: 2.0
  # max_latency_ms: {1: 5.0}
  # max_size_mb: 1.0
  # max_memory_mb: 200    # peak resident memory of the artifact alone in a fresh process
"""
