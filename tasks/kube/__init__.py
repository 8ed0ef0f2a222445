"""The Kubernetes backend: manifests (pure), the Job runner and the cluster canary.

``manifests`` builds plain dicts and never talks to a cluster, so ``gpuflow manifests`` can print exactly
what the runner would apply; the modules that do talk to a cluster import it.
"""
