"""ImageNet ResNet-152, full pre-activation: Table 5, 21.1% top-1 / 5.5% top-5 (320 crop)."""

from resnet_v2_jax import config as config_lib


def get_config():
    c = config_lib.default()
    c.experiment = "imagenet_resnet152"
    c.paper_error = 21.1
    c.dataset = "imagenet2012"
    c.model.family = "imagenet"
    c.model.depth = 152
    c.model.block = "bottleneck"
    c.model.num_classes = 1000
    c.model.dtype = "bfloat16"
    c.imagenet_augment = "scale"
    c.imagenet_eval_size = 320
    c.batch_size = 256
    c.eval_batch_size = 250
    c.learning_rate = 0.1
    c.lr_base_batch = 256  # linear scaling: lr 0.1 per 256 images
    c.schedule = "epochs_step"
    c.lr_boundaries = (30, 60)
    c.warmup_steps = 0
    c.num_train_steps = 90 * 1281167 // 256  # 90 epochs (fb.resnet.torch)
    c.eval_every_steps = 5000
    c.checkpoint_every_steps = 2500
    return c
