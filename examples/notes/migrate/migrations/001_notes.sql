-- The notes the API serves.
CREATE TABLE notes (
  id         serial PRIMARY KEY,
  title      text NOT NULL UNIQUE,
  body       text NOT NULL DEFAULT '',
  created_at timestamptz NOT NULL DEFAULT now()
);
