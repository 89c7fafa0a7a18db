"""S3 access: the botocore client factory and error names, the lean HTTP/1.1 PUT and GET, the pre-flight
and the parent's own requests (remote), Object Lock calls (lock), the one listing paginator (listing).
"""
