"""Running one engine over several ranks: tensor parallelism (and expert parallelism inside it)
on torch.distributed, on one node or several.

- `layout.py`: which ranks a node runs and the startup checks of the sizes;
- `group.py`: joining the ranks' process groups (NCCL or gloo for the layers, gloo for control);
- `lockstep.py`: rank 0 broadcasts each batch it decided; the other ranks run the same forward;
- `ranks.py`: the follower rank processes (start, wait, stop) and the per-node launch.
"""
