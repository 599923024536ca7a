"""The edgenet family's block types, without torch: the family builds them
(edgekd.models.family) and the recipe checks distill.search.blocks against them
(edgekd.search.config), which must load without torch."""

BLOCKS = ("basic", "plain", "rep", "rep_ac", "inverted")
