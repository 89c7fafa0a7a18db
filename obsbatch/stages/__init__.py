"""The backup's stages, each a function or small class over the walk's stream: walk (scandir, keys) ->
filters -> journal -> stability -> plan -> (the engine) -> after_upload.
"""
