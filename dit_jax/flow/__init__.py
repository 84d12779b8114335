"""Training objectives and samplers: probability paths (flow matching, DDPM/VP), timestep
distributions and grids, prediction conversions, lax.scan samplers with guidance.

Time runs from t = 0 (noise) to t = 1 (data); see `paths` for how DDPM's integer steps map
onto it.
"""
from dit_jax.flow.objectives import DDPM, DDPMHybrid, FlowMatching, make_objective
from dit_jax.flow.paths import (PREDICTIONS, Coefficients, LinearPath, Posterior, VPPath,
                                alphas_cumprod, convert, convert_model_fn, ddpm_posterior,
                                ddpm_step_to_t, from_x1_eps, linear_betas, mix_log_variance,
                                t_to_ddpm_step, to_x1_eps)
from dit_jax.flow.samplers import (METHODS, Sampler, ddim_step, ddpm_learned_step, ddpm_step,
                                   euler_step, guided_fn, heun_step, learned_log_variance,
                                   make_sampler, respaced_grid, respaced_steps, sample_ddpm,
                                   sample_ode, sampler_for, uses_guidance)
from dit_jax.flow.timesteps import (flux_shift, logit_normal_t, sample_t, sd3_shift,
                                    shift_time, shifted_grid, uniform_grid, uniform_t)

__all__ = ["Coefficients", "DDPM", "DDPMHybrid", "FlowMatching", "LinearPath", "METHODS",
           "PREDICTIONS", "Posterior", "Sampler", "VPPath", "alphas_cumprod", "convert",
           "convert_model_fn", "ddim_step", "ddpm_learned_step", "ddpm_posterior", "ddpm_step",
           "ddpm_step_to_t", "euler_step", "flux_shift", "from_x1_eps", "guided_fn", "heun_step",
           "learned_log_variance", "linear_betas", "logit_normal_t", "make_objective",
           "make_sampler", "mix_log_variance", "respaced_grid", "respaced_steps", "sample_ddpm",
           "sample_ode", "sample_t", "sampler_for", "sd3_shift", "shift_time", "shifted_grid",
           "t_to_ddpm_step", "to_x1_eps", "uniform_grid", "uniform_t", "uses_guidance"]
