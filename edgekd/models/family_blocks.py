"""The edgenet family's name and block types, without torch: the family builds them
(edgekd.models.family), the search space names them (edgekd.search.space), and the recipe checks
distill.search.blocks against them (edgekd.search.config) and warns at the start of a run
(edgekd.pipeline.preflight.advice): those must load without torch."""

FAMILY = "edgenet"  # the architecture name the family registers, and the search's candidates carry
BLOCKS = ("basic", "plain", "rep", "rep_ac", "inverted")
# their fused kernels lose accuracy in post-training int8: on Fashion-MNIST a rep_ac student lost up to
# 6 val points (the accuracy budget kept a convolution in float) where QAT kept it (student-named-rep_ac.md)
PTQ_SENSITIVE_BLOCKS = ("rep_ac",)
