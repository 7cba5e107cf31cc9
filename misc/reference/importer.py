"""Import a reference (TF 0.11/0.12) StackGAN checkpoint into our trainers.

What the reference trainer saved -- network weights, batch-norm moving
statistics, Adam slots and beta powers, ``global_step`` -- is restored by
name after the whole mapping is checked (``misc.reference.tf1_checkpoint``); the
iteration counter comes from the file name as in the reference
(``model_82000.ckpt`` -> 82000).  The report lists every checkpoint model
variable nothing took; optimizer slots, counters and TF 0.12's zero-debias
state are expected leftovers.
"""

import dataclasses

from misc.config import CheckpointError
from misc.reference.tf1_checkpoint import ReferenceCheckpoint


@dataclasses.dataclass
class LoadReport:
    """What loading a checkpoint did."""

    path: str
    kind: str         # 'reference' or 'native'
    stage: int
    counter: int      # iteration the checkpoint was saved at (None if unknown)
    filled: list      # reference names of the model variables set
    unused: list = dataclasses.field(default_factory=list)      # checkpoint model variables not taken
    not_needed: list = dataclasses.field(default_factory=list)  # of networks not built
    leftovers: dict = dataclasses.field(default_factory=dict)   # kind -> names (slots, counters, ...)
    optimizer_state: bool = False

    def summary(self):
        counter = "" if self.counter is None else f", iteration {self.counter}"
        lines = [f"Loaded {len(self.filled)} variables from {self.kind} Stage-{'I' * self.stage} "
                 f"checkpoint {self.path}{counter}."]
        if self.unused:
            lines.append(f"Checkpoint model variables not used ({len(self.unused)}): "
                         f"{', '.join(self.unused)}")
        if self.not_needed:
            scopes = sorted({n.split('/', 1)[0] for n in self.not_needed})
            lines.append(f"Not needed here: {len(self.not_needed)} variables of {', '.join(scopes)}.")
        if self.leftovers:
            lines.append("Training state not loaded: " + ", ".join(
                f"{len(v)} {k}" for k, v in sorted(self.leftovers.items())) + ".")
        if self.optimizer_state:
            lines.append("Optimizer state (Adam slots, step counts) imported.")
        return "\n".join(lines)


def network_variables(gan, trainable_only=False):
    """{reference name: variable} over all networks of a trainer."""
    found = {}
    for network in gan.networks().values():
        for name, var in network.reference_variables().items():
            if trainable_only and not var.trainable:
                continue
            found[name] = var
    return found


def import_reference_checkpoint(gan, path, trainable_only=False, scopes=None,
                                optimizer_state=True, network_type=None):
    """Load a reference checkpoint into ``gan`` (a StageIGAN or StageIIGAN).

    ``scopes``: only these network scopes (e.g. ``("g_net", "d_net")`` when a
    Stage-II run starts from a Stage-I checkpoint); ``trainable_only``: skip
    the batch-norm moving statistics (the reference Stage-II does this with a
    Stage-I checkpoint).  Optimizer state is loaded for the optimizers whose
    variables are all loaded, when the checkpoint has it.
    """
    ckpt = ReferenceCheckpoint(path)
    if network_type not in (None, "default") and "hr_generator" in gan.networks():
        raise CheckpointError(
            f"{path}: holds a '{network_type}' Stage-I network; Stage-II builds on the 'default' "
            "Stage-I network only. Start Stage-II from a Stage-I checkpoint of the 'default' network.")
    wanted = network_variables(gan, trainable_only)
    if scopes is not None:
        wanted = {n: v for n, v in wanted.items() if n.split("/", 1)[0] in scopes}
    missing_scopes = sorted({n.split("/", 1)[0] for n in wanted} - {
        n.split("/", 1)[0] for n in ckpt.shapes})
    if missing_scopes:
        raise CheckpointError(
            f"{path}: has no {', '.join(s + '/' for s in missing_scopes)} variables; "
            "it is not a checkpoint of the networks this run needs (a Stage-I checkpoint "
            "cannot initialise Stage-II networks, and vice versa).")
    plan = ckpt.load(wanted, scopes, network_type)

    loaded_state = False
    if optimizer_state:
        for optimizer, scope, slot_names, power_suffix in gan.reference_optimizer_layout():
            variables = {n: v for n, v in wanted.items()
                         if n.startswith(scope + "/") and v.trainable}
            if variables and ckpt.load_adam_state(optimizer, variables, slot_names, power_suffix,
                                                  steps_if_unknown=ckpt.counter):
                loaded_state = True
        if "global_step" in ckpt.shapes:
            gan.global_step.assign(int(ckpt.tensor("global_step")))
    counter = ckpt.counter or 0
    gan.counter.assign(counter)
    unused = plan.unused
    if trainable_only:  # the moving statistics are left out on purpose
        unused = [n for n in unused if not n.endswith(("/mean", "/variance"))]
    stage = 2 if ckpt.has_scope("hr_g_net") else 1
    return LoadReport(path, "reference", stage, counter, plan.matched, unused, plan.not_needed,
                      plan.leftovers, loaded_state)
