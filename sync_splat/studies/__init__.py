"""The paper's toy applications and its case study: research code that uses the sampler.

The wide-image (1-to-n crops), ambiguous-image (permutations, inner rotations, means of images) and layered-image
(blended layers, n-to-1) bridges reproduce the paper's projection types on small images; `case_study` runs every
synchronisation case over them with the exact prior. None of it is part of the product's bridges.
"""
