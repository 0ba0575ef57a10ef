DROP SEQUENCE redis_verifications;
