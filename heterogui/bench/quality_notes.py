"""The prose of docs/quality.md: its protocol and the notes above its tables.

``bench.quality_report`` writes them between the tables it builds from the measured numbers;
figures quoted here come from the benchmarks each note names.
"""

from __future__ import annotations

PROTOCOL = """Protocol (docs/method.md sec. 11): A is trained on task A (half of the classes), B on
task B (the other half). Joint: softmax per head, argmax over the union of both tasks' classes, on
the test inputs of both tasks. Task A / Task B: that task's test inputs, argmax of its own head.
Avg: the mean of Task A and Task B. A alone / B alone have no head for the other task: their Joint
can only be right on their own task's inputs, and the other task's accuracy is undefined (—). Values
are percent, mean ± sample std over the seeds; seed s trains A and B with seeds 2s and 2s + 1 (seed
0: the demo zoo) and draws the calibration inputs with seed s. Weight average and permute need equal
widths; on depth-different pairs they run on the SMA-padded topology. "homogeneous zip" is the zip
of the pair's homogeneous reference (the same A with a B of A's architecture). "padding control"
(depth pairs) zips A with that homogeneous B padded with identity blocks to this pair's depth (it
computes exactly the homogeneous B's function), A at its LMA slots and B's real blocks first, so
identity blocks meet real ones as in a depth merge: its gap to the homogeneous zip is the cost of
padding alone (with the paper's fusion, and with sequential least squares against the homogeneous
zip's sequential row: the depth merge's own cost under the best fusion). The sweeps use LMA on
depth pairs (SMA elsewhere; with equal depths all alignments coincide). "merge s" is the wall
time of the merge (BN re-estimation of A and B, CKA, alignment, feature pass, matching, fusion,
BN re-estimation of the merged model), not counting evaluation.
For LayerNorm models (the ViT pairs) rho = 0 is not the ensemble: one LayerNorm over both models'
concatenated features normalizes them together, so that check is left out there."""


FUSION_NOTE = """"average" fuses matched weights as the paper does (W* = M W U); "least squares"
replaces the unmerge U with the ridge regression of the parents' features on the merged ones
(zip.fusion: least_squares, ridge 1e-2 towards the paper's U; docs/method.md sec. 9): each
merged layer then best
reproduces the averaged outputs of A's and B's layers from the merged inputs. Rows "zip (MODE,
least squares)" are the same matchings fused that way; "least squares, heads refit" then refits
the unmerge the heads read on the finished merge's own state (one pass of the merge up to the
heads; zip.fusion: least_squares_heads); "sequential least squares" refits
each such weight on the inputs it really gets in the merged model, block by block, and the heads'
unmerge after it (more passes of A, B and the merge; zip.fusion: least_squares_sequential). The
least-squares fusions run in
BatchNorm units here (zip.bn_units, the default; docs/method.md sec. 9): each layer that a
BatchNorm follows is first divided by that BatchNorm's running std (the same function), so
matched rows of A and B weigh the same, and the merged rows are scaled back by their groups'
average std; "average in BatchNorm units" is the paper's average fused that way, and the
"without BatchNorm units" rows are the least-squares fusions on the weights as trained
(BatchNorm pairs only). The plain "average" rows, the baselines, the sweeps and the padding
control keep the paper's fusion on the weights as trained. "renormalized" rows rescale the merged
features that a per-feature affine module writes (LayerNorm outputs, value projections: the ViT
pairs; BatchNorm models have none, BatchNorm re-estimation does that) to their groups' average
mean and spread (zip.renormalize; docs/method.md sec. 9). "heads selected" rows (models with
attention: the ViT pairs) give every merged head pair the weights of its stronger head whole,
by output energy, instead of their average (zip.heads: select; docs/method.md sec. 8), with
the fusion their label names. "heads searched" rows start from that choice and flip one pair's
kept head at a time while the merge's outputs move closer to its parents' on the calibration
data (KL divergence of their logits, no labels read; zip.heads: search, docs/method.md sec. 8),
with sequential least squares only: a merge per flip tried, 17-25 a ViT pair. "heads split"
rows average no head and drop none: every head of both models is kept, and after fusion each
is cut to half its dimension (an exact change of basis inside the head, by the SVD of its
query-key form and of its value-output map, then its weaker half dropped; zip.heads: split,
docs/method.md sec. 8), with the fusion their label names. "—": not applicable."""


PLACEMENT_NOTE = """LMA splits the deeper model's blocks of a stage into one contiguous segment per
block of the shallower model; "LMA" (heterogui's default) places that block at its segment's
last deep slot, "LMA first" at the first (where the published code puts it), "LMA similar" at
the segment's slot of highest CKA with it. The shallower model is padded with identity blocks
at the other slots."""


DEFAULT_NOTE = """The default, `zip.fusion: auto`, follows these rows: least squares for the VGG
and ResNet families, where it beats the paper's fusion on every pair for a few hundredths of
a second a merge, and its sequential refit for ViT, where it is the only fusion near the
ensemble (the tails' unmerge refit with it, docs/method.md sec. 9) for 0.2-0.4 s a zoo merge;
the paper's fusion for BERT (least squares did not gain on MiniLM's
sentence similarity, docs/transformers.md), for the decoders (better on the trained pair,
docs/decoders.md, but 28-35 s a SmolLM2 merge against five seconds), for GPT-2 (its
one measured pair, trained apart here, gains from the sequential refit: docs/decoders.md) and
for MLPs (no pair measures them). On the CNNs the sequential refit is better still but costs
5-30 times a re-merge for a point or two, too slow for the workbench's slider: an option
there, not the default. Fusion in
BatchNorm units is on by default (zip.bn_units) because each fusion is better with it on
average across the BatchNorm pairs (the last three lines above), for no extra pass (about 8% of
a ResNet re-merge); the sequential refit gains least from it. The heads default, `zip.heads:
auto`, is split for ViT models, where it beats paired heads under every fusion on both ViT
pairs (the "heads split" columns above, a few milliseconds a merge), and the paper's pair for
the others: on MiniLM's sentence similarity a split scored lower in all 11 settings
(docs/transformers.md); GPT-2 can split but pairs by default (a split helped its one
measured pair, trained apart here, by 0.4-5%: docs/decoders.md), rotary decoders cannot
split. The rows above name their fusion and heads, so they do not depend on the defaults."""


KEPT_NOTE = """A transformer merge averages three kinds of merge points: attention heads (a ViT's
query/key and value/output spaces), the residual stream every block reads and writes, and the
MLPs' hidden features. Each row here keeps one kind unmerged (rho 0 there, rho 1 on the rest;
``zip.overrides``), at the sweep alignment: "heads kept" keeps every head of both models (with
the paper's fusion and with sequential least squares, the other heads paired), "stream kept"
the residual stream and "MLPs kept" the MLPs' hidden features (sequential least squares, heads
as the family's default, split for ViT). They are wider than the paper's width, so the checks
leave them out, but the gap between each and the best zip at the paper's width is what merging
that part costs. The best zip at the paper's width counts the "heads selected", "heads
searched" and "heads split" rows too: a split layer holds every head of both models at half
its size, the paper's width when A and B have as many heads, narrower when they differ (the
paper keeps the larger count)."""


NWAY_NOTE = """Three models merged at once (the N-way zip, docs/method.md sec. 12) and one after
another (sequential merging) are compared with their ensemble on the zoo's three-task groups in
`docs/nway.md` (`heterogui bench nway --seeds 3 --out docs --threads 1`)."""

MEASURES_NOTE = """Every alignment above reads the CKA of the block outputs (the paper's measure
and the default for these families). Aligning by the CKA of the block updates (what each block adds
to its input, docs/method.md sec. 3) is compared on every depth pair in `docs/measures.md`
(`heterogui bench measures`): on these pairs it aligns about as well (better on 2, the same on
5, worse on 3 of 10 alignments, Joint within 1 point either way), so it did not help here; it
helps the decoders."""
