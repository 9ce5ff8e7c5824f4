"""Training the sparse-view reconstruction model (LRM) on this project's renders.

Plain PyTorch; no Ray and no ``pipelines`` imports (``pipelines.train`` runs these on Ray
Train). Two stages as upstream InstantMesh trains them (``configs/instant-nerf-large-train.yaml``
then ``configs/instant-mesh-large-train.yaml`` of TencentARC/InstantMesh):

- ``training.batches`` -- a collated :class:`instantmesh.lrm_data.Instantmesh32Dataset` batch
  -> model inputs and supervision (:class:`~training.batches.PreparedBatch`);
- ``training.losses`` -- the loss terms and their weights (each constant cites its source);
- ``training.nerf_stage`` -- stage 1 (NeRF variants): volume rendering of random crops;
- ``training.mesh_stage`` -- stage 2 (mesh variants): FlexiCubes + differentiable rasterisation;
- ``training.stages`` -- one registry entry per stage: the step function, the data preparation
  and the optimiser / schedule constants.
"""
