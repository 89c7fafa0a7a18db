"""Imported by the pool's fork server (pool.context: after obsbatch.engine.worker), and by nothing else at
import time.

The fork server is the process every worker is forked from. Its preloading the worker module pays for
botocore's import once, and parsing botocore's S3 model here lets every worker inherit the parsed data:
building a client then takes ~5 ms instead of ~65 ms (issue #5). The parent never imports this module, so
it never parses a model it does not use.
"""

import botocore.loaders


def _warm_loader():
    """botocore's data loader with the files a client creation loads already parsed.

    If a botocore version loads others, they are simply read per client, as before.
    """
    loader = botocore.loaders.create_loader()
    try:
        for name in ("endpoints", "partitions", "sdk-default-configuration"):
            loader.load_data(name)
        for kind in ("service-2", "endpoint-rule-set-1"):
            loader.load_service_model("s3", kind)
    except Exception:  # noqa: BLE001 - an optimisation only; the client loads what it needs itself
        pass
    return loader


#: The warm loader each worker's botocore session uses (WorkerContext).
LOADER = _warm_loader()
