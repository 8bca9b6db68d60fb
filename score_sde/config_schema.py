"""The config schema: every field an experiment config may set, by section, with its meaning.

`config_checks.all_fields_known` refuses a config holding any other field, so a typo such as
training.continuouse fails up front instead of being silently ignored. Code that starts reading a
new field declares it here and sets it in the default configs (configs/default_*_configs.py).
"(official)" marks fields of the official configs (Song et al. 2021) that no model reads.
"""

FIELDS = {
    'seed': 'integer seed of the run: every random key is split from jax.random.key(seed)',
    'training': {
        'method': "what is trained: 'score' (a score model, the default; None: 'score') | "
                  "'autoencoder' (the KL autoencoder of latent diffusion, section autoencoder) | "
                  "'cd' (consistency distillation of training.teacher) | 'ct' | 'ict' "
                  '(consistency training, original and improved; section consistency)',
        'teacher': "training.method 'cd': the workdir of the trained score run to distil",
        'sde': "'vpsde' | 'subvpsde' | 'vesde' | 'rectified_flow' (the linear path x(t) = "
               "(1 - t) x0 + t z, a velocity model)",
        'continuous': 'continuous time, t ~ U(eps, T); else the discrete SMLD / DDPM loss',
        'reduce_mean': 'average the squared error over data dimensions (else half the sum)',
        'likelihood_weighting': 'weight the loss by g(t)^2 (Song et al. 2021b)',
        'batch_size': 'training batch size (global, over all devices)',
        'n_iters': 'number of training steps',
        'n_jitted_steps': 'training steps run in one compiled call',
        'log_freq': 'steps between logged training losses',
        'eval_freq': 'steps between evaluation losses on test batches',
        'snapshot_freq': 'steps between kept checkpoints (and snapshot samples)',
        'snapshot_freq_for_preemption': 'steps between checkpoints that resume a preempted run',
        'snapshot_sampling': 'draw samples at each snapshot',
        'label_dropout': 'class-conditional models: probability in [0, 1) that a training '
                         'label is replaced by the null label (classifier-free guidance; '
                         'None: 0)',
        'edm_p_mean': "model.preconditioning 'edm': mean of the log noise levels of the loss "
                      '(None: -1.2)',
        'edm_p_std': "model.preconditioning 'edm': std of the log noise levels of the loss "
                     '(None: 1.2)',
    },
    'sampling': {
        'method': "'pc' (predictor-corrector) | 'ode' (probability flow) | 'ddim' | 'dpm_solver' | "
                  "'edm' | 'ddim_diffusers' (diffusers' DDIMScheduler, discrete VP models) | "
                  "'consistency' (consistency models)",
        'predictor': 'registered predictor name (sampling.registered_predictors())',
        'corrector': 'registered corrector name (sampling.registered_correctors())',
        'snr': 'signal-to-noise ratio setting the Langevin corrector step size',
        'n_steps_each': 'corrector steps per noise level',
        'step_size_rule': "Langevin step size from norms averaged over the 'batch' | 'per_sample'",
        'probability_flow': 'predict with the probability-flow ODE instead of the reverse SDE',
        'noise_removal': 'return the noise-free mean of the last step',
        'eps': 'smallest time the sampler integrates to',
        'ode_solver': "method 'ode': 'dopri5' | 'tsit5' | 'euler' | 'heun'",
        'rtol': "method 'ode': relative tolerance of the adaptive solvers",
        'atol': "method 'ode': absolute tolerance of the adaptive solvers",
        'ode_steps': "method 'ode': number of steps of the fixed-step solvers",
        'steps': "methods 'ddim' | 'dpm_solver' | 'edm': number of steps (or set nfe); "
                 "'ddim_diffusers': diffusers' num_inference_steps",
        'nfe': "methods 'ddim' | 'dpm_solver' | 'edm': budget of score evaluations",
        'time_schedule': "'time_uniform' | 'logsnr' | 'quadratic' | 'rho' (None: the method's)",
        'eta': "methods 'ddim' | 'ddim_diffusers': 0 deterministic, 1 the DDPM posterior noise",
        'timestep_spacing': "method 'ddim_diffusers': 'leading' | 'trailing' | 'linspace' "
                            "(diffusers' set_timesteps)",
        'steps_offset': "method 'ddim_diffusers': integer >= 0 added to the 'leading' timesteps",
        'set_alpha_to_one': "method 'ddim_diffusers': the last step goes to alphabar = 1 (else "
                            'alphabar_0)',
        'dpm_solver_variant': "method 'dpm_solver': '2M' | '3M' | '2S' | '3S'",
        'rho': "time_schedule 'rho': EDM's exponent of the sigma / alpha schedule",
        's_churn': "method 'edm': stochastic churn (0: deterministic Heun)",
        's_min': "method 'edm': smallest sigma / alpha with churn",
        's_max': "method 'edm': largest sigma / alpha with churn (None: no limit)",
        's_noise': "method 'edm': scale of the churn noise",
        'guidance_scale': 'class- or text-conditional models: classifier-free guidance scale w '
                          '(0 unconditional, 1 conditional; None: conditional without guidance)',
        'consistency_levels': "method 'consistency': EDM noise levels (sigma / alpha) of the steps "
                              'after the first, decreasing (() : one step)',
        'consistency_sigma_min': "method 'consistency': the level at which the consistency "
                                 'function is the identity',
    },
    'likelihood': {
        'solver': "probability-flow ODE solver: 'dopri5' | 'tsit5' | 'euler' | 'heun'",
        'rtol': 'relative tolerance of the adaptive solvers',
        'atol': 'absolute tolerance of the adaptive solvers',
        'num_steps': 'number of steps of the fixed-step solvers',
        'divergence': "'exact' | 'hutchinson_rademacher' | 'hutchinson_gaussian'",
        'num_probes': 'Hutchinson probes per sample',
        'eps': 'time at which the data density is evaluated',
    },
    'eval': {
        'batch_size': 'batch size of sampling and likelihood evaluation',
        'num_samples': 'number of samples drawn for evaluation',
        'enable_bpd': 'compute bits/dim of test data through the probability-flow ODE',
        'bpd_num_samples': 'number of test points whose bits/dim are computed',
        'bpd_num_repeats': 'passes over them, with fresh dequantization noise and probes',
        'bpd_dataset': "split whose bits/dim are computed: 'test' | 'train'",
        'enable_sampling': 'draw samples for sample-quality metrics',
        'enable_loss': 'compute the test loss',
        'begin_ckpt': 'first checkpoint evaluated',
        'end_ckpt': 'last checkpoint evaluated',
        'inception_weights': "pytorch-fid's FID Inception weights (.pth; None: "
                             '$SCORE_SDE_INCEPTION_WEIGHTS)',
        'fid_stats': 'reference statistics (.npz of scripts/fid_stats.py) for FID and KID; None: '
                     'no FID / KID',
    },
    'data': {
        'dataset': 'registered dataset name (datasets.registered_datasets())',
        'category': 'LSUN category, e.g. bedroom, church_outdoor',
        'tfrecords_path': 'TFRecord file of the FFHQ / CelebA-HQ images',
        'image_size': 'height = width of the images in pixels',
        'num_channels': 'image channels',
        'centered': 'scale data to [-1, 1] (else [0, 1])',
        'random_flip': 'random horizontal flips of training images',
        'uniform_dequantization': 'add uniform noise to the 8-bit training images',
        'dequantization': "bits/dim data: 'uniform' (8-bit images) | 'none' (continuous data)",
        'data_dir': 'tfds data_dir holding the prepared array_record datasets (None: tfds default)',
        'path': "'folder' / 'npz' / FFHQ / CelebAHQ: the image folder or .npz file",
        'shuffle_seed': 'seed of the training shuffle, flips and dequantization (None: seed)',
        'num_epochs': 'passes over the training split (None: endless)',
    },
    'model': {
        'name': 'registered model name (models.registered_models())',
        'nf': 'base number of channels (hidden units of the MLP)',
        'num_layers': 'MLP: number of hidden layers',
        'ch_mult': 'channels per resolution, as multiples of nf',
        'num_res_blocks': 'residual blocks per resolution',
        'attn_resolutions': 'resolutions (pixels) with self-attention',
        'resamp_with_conv': 'DDPM up/down-sampling with a convolution',
        'conditional': 'condition the network on the noise level / time',
        'normalization': "e.g. 'GroupNorm' (DDPM, NCSN++), 'InstanceNorm++' (NCSN, NCSNv2)",
        'nonlinearity': "'swish' | 'elu' | 'relu' | 'lrelu' (slope 0.2)",
        'dropout': 'dropout rate of the residual blocks',
        'embedding_type': "noise-level embedding: 'fourier' (Gaussian) | 'positional' (sinusoidal)",
        'fourier_scale': 'scale of the Gaussian Fourier projection',
        'fir': 'FIR (StyleGAN2) up/down-sampling',
        'fir_kernel': 'its 1-D kernel',
        'skip_rescale': 'rescale skip connections by 1/sqrt(2)',
        'resblock_type': "'ddpm' | 'biggan'",
        'progressive': "output path: 'none' | 'output_skip' | 'residual'",
        'progressive_input': "input path: 'none' | 'input_skip' | 'residual'",
        'progressive_combine': "'sum' | 'cat'",
        'init_scale': 'initialisation scale of the last convolution of each block',
        'attention_type': "(official) 'ddpm'",
        'conv_size': '(official) 3',
        'interpolation': "NCSN / NCSNv2 RefineNet upsampling: 'bilinear' | 'nearest_neighbor'",
        'num_classes': 'NCSN: number of noise levels the normalisation is conditioned on; '
                       'NCSN++ / DDPM / MLP: number of data classes of a class-conditional '
                       'model (None: unconditional)',
        'scale_by_sigma': 'divide the network output by the noise level',
        'conditioning': "ldm_unet: None | 'class' (model.num_classes) | 'text' (captions, a "
                        "text encoder trained with the model) | 'clip' (captions, the frozen "
                        'CLIP of model.text_encoder)',
        'head_dim': 'ldm_unet: channels per attention head',
        'context_dim': 'ldm_unet: width of the cross-attention context (the text features of '
                       "'clip')",
        'context_length': "ldm_unet 'text': words per caption; 'clip': the tokenizer's 77",
        'vocabulary': "ldm_unet 'text': the caption words (None: those of the training "
                      "captions, recorded in the run's config)",
        'text_layers': "ldm_unet 'text': transformer layers of the caption encoder",
        'text_heads': "ldm_unet 'text': attention heads of the caption encoder",
        'text_encoder': "ldm_unet 'clip': a Stable Diffusion checkpoint whose tokenizer and CLIP "
                        'text encoder (frozen) encode the captions',
        'preconditioning': "None (the official parameterisations) | 'edm' (Karras et al. 2022: "
                           "the network is the F of a denoiser, score_sde.edm) | 'consistency' "
                           '(a consistency model, trained by training.method cd / ct / ict)',
        'sigma_data': "model.preconditioning 'edm': std of the data (None: 0.5, images in "
                      '[-1, 1])',
        'parameterization': "None (the score parameterisations; 'velocity' for training.sde "
                            "'rectified_flow') | 'velocity' (the network predicts the flow's "
                            'velocity, trained by flow matching, score_sde.flows)',
        'ema_rate': 'rate of the exponential moving average of the weights (0: none)',
        'num_scales': 'number of noise levels / discrete steps N',
        'sigma_min': 'VE SDE: smallest noise level',
        'sigma_max': 'VE SDE: largest noise level',
        'beta_min': 'VP / sub-VP SDE: beta(0)',
        'beta_max': 'VP / sub-VP SDE: beta(1)',
        'beta_schedule': "VP / sub-VP SDE: 'linear' | 'scaled_linear' | 'cosine' (None: 'linear')",
    },
    'consistency': {
        'num_levels': "'cd': number N of Karras noise levels (None: 18)",
        'curriculum_start': "'ct' / 'ict': levels at step 0, s0 (None: 2 / 10)",
        'curriculum_end': "'ct' / 'ict': the curriculum's s1, N ends at s1 + 1 (None: 150 / 1280)",
        'level_sampling': "pairs of levels drawn 'uniform' | 'lognormal' (iCT Eq. 9; None: "
                          "the method's)",
        'distance': "'l2' | 'pseudo_huber' (iCT Eq. 7) | 'lpips' (None: the method's)",
        'weighting': "'uniform' | 'ict' (1 / (sigma_{n+1} - sigma_n); None: the method's)",
        'target_ema_rate': "EMA rate of the target network in [0, 1) (None: 'cd' 0.95, 'ct' "
                           "CT's schedule, 'ict' 0)",
        'teacher_solver': "'cd': the teacher's ODE step 'euler' | 'heun' | 'dpm_solver' "
                          "(None: 'heun')",
        'sigma_min': 'smallest noise level, where the model is the identity (None: 0.002)',
        'sigma_max': "largest noise level (None: the SDE's level sigma / alpha at T)",
        'rho': 'exponent of the Karras levels (None: 7)',
        'p_mean': "'lognormal' level sampling: mean of the log levels (None: -1.1)",
        'p_std': "'lognormal' level sampling: std of the log levels (None: 2.0)",
        'lpips_weights': "distance 'lpips': directory of the LPIPS files (lpips.py; None: "
                         '$SCORE_SDE_LPIPS_WEIGHTS)',
    },
    'classifier': {
        'blocks_per_group': 'noise-conditional Wide-ResNet: residual blocks per group',
        'channel_multiplier': 'its width multiplier',
        'num_classes': 'number of classes it predicts',
    },
    'optim': {
        'optimizer': "'Adam'",
        'lr': 'learning rate after warm-up',
        'beta1': 'Adam beta1',
        'beta2': 'Adam beta2 (None: 0.999)',
        'eps': 'Adam epsilon',
        'amsgrad': '(official; its optimizer ignores it too) False',
        'weight_decay': 'decoupled weight decay',
        'warmup': 'steps of linear learning-rate warm-up (0: none)',
        'grad_clip': 'largest global gradient norm (negative: no clipping)',
    },
    'latent': {
        'autoencoder': 'latent score runs: the workdir of an autoencoder run, or a Stable '
                       'Diffusion checkpoint (its VAE); the model trains on its latents',
        'scale_factor': 'latents = scale_factor x z (None: the SD checkpoint\'s, or 1 / std of '
                        "the first training batch's latents, recorded in the run's config)",
        'sample_posterior': 'encode training images to a posterior sample (else its mean)',
        'checkpoint': 'Stable Diffusion checkpoint: a diffusers folder or a .safetensors / .ckpt '
                      'single file',
        'architecture': "single files: a preset 'sd1' | 'sd2' | 'sd2-base' or a diffusers folder "
                        "with the configs (None: the file's family)",
        'tokenizer': "single files: a tokenizer folder (vocab.json, merges.txt) or OpenAI's "
                     'bpe_simple_vocab_16e6.txt.gz',
        'prediction_type': "'epsilon' | 'v_prediction' (None: the checkpoint's or the preset's)",
        'dtype': "computation and parameter dtype: 'float32' | 'bfloat16' | 'float16' (None: "
                 'bfloat16 on accelerators, float32 on CPU)',
        'timesteps': "'discrete' (the U-Net at the chain's steps) | 'continuous' (at the "
                     'fractional step of the continuous kernel)',
    },
    'autoencoder': {
        'block_channels': 'channels of each encoder block; downsampling 2^(len - 1)',
        'layers_per_block': 'ResNet blocks per encoder block (the decoder has one more)',
        'latent_channels': 'channels of the latent',
        'norm_groups': 'groups of the GroupNorms (divides every block_channels entry)',
        'reconstruction': "'l1' | 'l2' reconstruction error",
        'kl_weight': 'weight of the KL term (LDM: 1e-6)',
        'sample_posterior': 'decode a posterior sample in training (else its mean)',
        'discriminator_weight': 'weight of the PatchGAN term, with the adaptive weight (0: none)',
        'discriminator_start': 'training step from which the adversarial terms are on',
        'discriminator_channels': 'channels of the first discriminator layer',
        'discriminator_layers': 'stride-2 layers of the discriminator',
        'perceptual_weight': 'weight of the LPIPS term added to the reconstruction error (0: none)',
        'perceptual_weights': 'directory of the LPIPS files (lpips.py; None: '
                              '$SCORE_SDE_LPIPS_WEIGHTS)',
    },
    'generate': {
        'negative_prompt': 'the prompt guidance steers away from (the null context)',
        'num_images': 'images per prompt',
        'batch_size': 'images generated at once',
        'height': 'image height in pixels',
        'width': 'image width in pixels',
    },
}

