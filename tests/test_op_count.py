"""``hsbs bench --sections ops``: the operator calls of one training step, counted by torch.profiler."""
import torch
from torch import nn

from hsbs_lib.bench import benchmark_ops, ops_table, training_step_ops
from hsbs_lib.config import config_path, load_config
from hsbs_lib.engine.op_count import PHASES, step_op_counts
from hsbs_lib.engine.train import ModelWithLoss
from hsbs_lib.models.base import FERModel, ModelOutput


class _Linear(FERModel):
    """A model whose step is known: a linear layer and the shared cross-entropy."""

    def __init__(self):
        nn.Module.__init__(self)
        self.fc = nn.Linear(3, 2)
        self.label_smoothing, self.class_weighted = 0.0, False
        self.register_buffer("class_weights", torch.ones(2), persistent=False)

    def forward(self, x):
        logits = self.fc(x.flatten(1)[:, :3])
        return ModelOutput(logits=logits, features=logits)


def test_the_count_sees_every_phase_and_an_added_operator():
    model = _Linear()
    images, targets = torch.randn(4, 3, 1, 1), {"label": torch.tensor([0, 1, 0, 1])}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    counts = step_op_counts(ModelWithLoss(model), optimizer, images, targets)
    assert all(counts.phase(name) > 0 for name in PHASES)
    assert counts.total == sum(counts.phase(name) for name in PHASES)
    assert counts.operators()["aten::linear"] == 1       # a composite operator counts once, not its insides
    assert "aten::addmm" not in counts.operators()

    class Doubled(_Linear):
        def loss(self, output, targets):
            return {"ce": self.classification_loss(output.logits * 2, targets)}

    doubled = Doubled()
    more = step_op_counts(ModelWithLoss(doubled), torch.optim.SGD(doubled.parameters(), lr=0.1), images, targets)
    assert more.phase("forward") == counts.phase("forward") + 1        # the mul
    assert more.phase("backward") > counts.phase("backward")            # and its backward
    assert more.phase("optimizer") == counts.phase("optimizer")


def test_a_recipes_count_is_deterministic_and_the_table_lists_every_method():
    config = load_config(config_path("synthfer_hsbs"))
    first, second = (training_step_ops(config, batch_size=4) for _ in range(2))
    assert first.by_phase == second.by_phase and first.total > 0
    table = benchmark_ops(("baseline", "hsbs", "clcl", "phanet", "mfer"), batch_size=4, parts=False)
    for name in ("baseline", "hsbs", "clcl", "phanet", "mfer"):
        assert f"| {name} |" in table
    assert "| baseline |" in table and "| 1.00x |" in table


def test_the_table_gives_each_rows_ratio_to_the_baseline():
    config = load_config(config_path("synthfer_baseline"))
    base = training_step_ops(config, batch_size=4)
    table = ops_table({"baseline": base, "twice": base})
    assert table.count("| 1.00x |") == 2 and f"| {base.total} |" in table
