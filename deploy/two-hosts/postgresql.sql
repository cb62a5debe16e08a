-- The shared state of every publisher instance: run once, as a PostgreSQL superuser.
--   psql -h db.example.org -U postgres -f deploy/two-hosts/postgresql.sql
-- The publisher creates (and later migrates) its own tables when it starts.
CREATE ROLE publisher LOGIN PASSWORD 'change-me';  -- then keep it in /etc/publisher/pgpass
CREATE DATABASE publisher OWNER publisher ENCODING 'UTF8' TEMPLATE template0;
\connect publisher
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT ALL ON SCHEMA public TO publisher;
