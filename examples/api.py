"""The demo's D-PSGD run from Python, without a config file."""

import distsgd as ds

task = ds.make_task("mnist1d", n_workers=16, model="cnn1d", partition="dirichlet", alpha=0.5)
ring = ds.make_topology("ring", 16)
result = ds.train(
    task,
    ds.DPSGD(lr=0.05, momentum=0.9, topology=ring),
    steps=500,
    eval_every=50,
    network=ds.NetworkModel(bandwidth=1.25e8, latency=1e-4),
)
print(result.final["test_acc"], result.final["bytes_sent_per_worker"], ring.spectral_gap)
