"""The stages of `quake_onnx.optimize`, one module each. Every stage takes the
Job of the one before and returns it (job.py); optimize.py lists them:

    load -> ort_oracle -> fuse_attention -> rewrite_ops -> choose_softmax_method -> state_shapes -> save
"""
