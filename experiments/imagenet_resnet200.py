"""ImageNet ResNet-200, full pre-activation: Table 5, 20.7% top-1 / 5.3% top-5 (320 crop, scale aug).

Paper's scale augmentation (shorter side in [256, 480], 224 crop, flip), evaluated on the full
320x320 crop; with fb.resnet.torch's random-sized crops (`imagenet_augment=inception`) 20.1/4.8.
Batch 256, lr 0.1 /10 at epochs 30 and 60, 90 epochs; bfloat16 compute.
"""

from resnet_v2_jax import config as config_lib


def get_config():
    c = config_lib.default()
    c.experiment = "imagenet_resnet200"
    c.paper_error = 20.7
    c.dataset = "imagenet2012"
    c.model.family = "imagenet"
    c.model.depth = 200
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
