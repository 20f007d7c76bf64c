/* Finds a head's lines in one pass and reports the few whose names Fulcrum handles.
 *
 * ``rawhead.scan_head`` (request heads) and ``upstream.response_head_policy`` (response heads) do the rest in
 * Python (mypyc-compiled); this is the part that looks at every byte: where each line ends, where the head
 * ends (its first blank line), and for each header line whether its name is one of the names given to
 * ``configure`` for that kind of head. ``rawhead._index_head_py`` is the same in Python, used where this
 * module was not built and in the tests that check the two agree.
 *
 * llhttp has checked the head before it gets here: lines end with CRLF and names are tokens.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_NAMES 64
#define MAX_PER_LETTER 8
#define FIELDS 5 /* per handled line: kind, line start, value start, value end, next line's start */

typedef struct {
    const char *name; /* lower-case */
    Py_ssize_t len;
    long kind;
} Name;

#define TABLES 2 /* 0: request heads, 1: response heads */

typedef struct {
    Name names[MAX_NAMES];
    PyObject *kept;                               /* the configured names, held so the pointers stay valid */
    unsigned char by_letter[32][MAX_PER_LETTER]; /* name indices, by first letter (& 31) */
    int n_by_letter[32];
} Table;

static Table tables[TABLES];

/* The table index an argument names, or -1 with an exception set. */
static long slot_of(PyObject *arg)
{
    long slot = PyLong_AsLong(arg);
    if (slot == -1 && PyErr_Occurred())
        return -1;
    if (slot < 0 || slot >= TABLES) {
        PyErr_SetString(PyExc_ValueError, "slot must be 0 or 1");
        return -1;
    }
    return slot;
}

/* configure(table, slot=0): the (name, kind) pairs that index_head(..., slot) reports. */
static PyObject *configure(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    long slot = 0;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "configure(table, slot=0)");
        return NULL;
    }
    if (nargs == 2 && (slot = slot_of(args[1])) < 0)
        return NULL;
    PyObject *table = args[0];
    if (!PyTuple_Check(table) || PyTuple_GET_SIZE(table) > MAX_NAMES) {
        PyErr_SetString(PyExc_ValueError, "configure() takes a tuple of at most 64 (name, kind) pairs");
        return NULL;
    }
    Name parsed[MAX_NAMES];
    unsigned char letters[32][MAX_PER_LETTER];
    int counts[32] = {0};
    Py_ssize_t n = PyTuple_GET_SIZE(table);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PyTuple_GET_ITEM(table, i);
        PyObject *name;
        long kind;
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(pair, 0))) {
            PyErr_SetString(PyExc_ValueError, "each entry must be a (bytes, int) pair");
            return NULL;
        }
        name = PyTuple_GET_ITEM(pair, 0);
        kind = PyLong_AsLong(PyTuple_GET_ITEM(pair, 1));
        if (kind == -1 && PyErr_Occurred())
            return NULL;
        if (PyBytes_GET_SIZE(name) == 0) {
            PyErr_SetString(PyExc_ValueError, "an empty name");
            return NULL;
        }
        int letter = PyBytes_AS_STRING(name)[0] & 31;
        if (counts[letter] == MAX_PER_LETTER) {
            PyErr_SetString(PyExc_ValueError, "more than 8 names with one first letter");
            return NULL;
        }
        letters[letter][counts[letter]++] = (unsigned char)i;
        parsed[i].name = PyBytes_AS_STRING(name);
        parsed[i].len = PyBytes_GET_SIZE(name);
        parsed[i].kind = kind;
    }
    Table *t = &tables[slot];
    Py_INCREF(table);
    Py_XSETREF(t->kept, table);
    memcpy(t->names, parsed, sizeof(Name) * (size_t)n);
    memcpy(t->by_letter, letters, sizeof(letters));
    memcpy(t->n_by_letter, counts, sizeof(counts));
    Py_RETURN_NONE;
}

/* The kind of the line at p (avail bytes before its CRLF) when it begins with a configured name and a colon,
 * or -1; *name_len is then the name's length. No colon search: names hold no colon, so a line that begins with
 * one of them followed by ':' has its first colon there. */
static long kind_of(const Table *t, const char *p, Py_ssize_t avail, Py_ssize_t *name_len)
{
    int letter = p[0] & 31;
    for (int j = 0; j < t->n_by_letter[letter]; j++) {
        const Name *candidate = &t->names[t->by_letter[letter][j]];
        Py_ssize_t len = candidate->len;
        if (len >= avail || p[len] != ':')
            continue;
        Py_ssize_t k = 0; /* | 0x20 lower-cases a letter and leaves '-' as it is; no other byte of a token
                             maps onto a letter or '-' */
        while (k < len && (p[k] | 0x20) == candidate->name[k])
            k++;
        if (k == len) {
            *name_len = len;
            return candidate->kind;
        }
    }
    return -1;
}

/* The offset of the next CRLF at or after ``from``, or -1. */
static Py_ssize_t next_crlf(const char *s, Py_ssize_t from, Py_ssize_t n)
{
    while (from < n) {
        const char *cr = memchr(s + from, '\r', (size_t)(n - from));
        if (cr == NULL)
            return -1;
        Py_ssize_t at = cr - s;
        if (at + 1 < n && s[at + 1] == '\n')
            return at;
        from = at + 1;
    }
    return -1;
}

/* index_head(source, start, slot=0) -> (blank, first, kind, at, value_start, value_end, next, ...) or None
 *
 * The head begins at ``start`` with its first line (a request or status line); ``slot`` picks the table of
 * names (0 for request heads, 1 for response heads). ``blank`` is the offset of its blank line, ``first``
 * that of its first header line; then five numbers for each header line whose name is configured. None:
 * no blank line ends a head there.
 */
static PyObject *index_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs < 2 || nargs > 3 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "index_head(source: bytes, start: int, slot: int = 0)");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    long slot = 0;
    if (nargs == 3 && (slot = slot_of(args[2])) < 0)
        return NULL;
    const Table *table = &tables[slot];
    const char *s = PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    if (start < 0 || start > n) {
        PyErr_SetString(PyExc_ValueError, "start out of range");
        return NULL;
    }
    Py_ssize_t stack[2 + FIELDS * 8];
    Py_ssize_t *found = stack;
    Py_ssize_t cap = (Py_ssize_t)(sizeof(stack) / sizeof(stack[0]));
    Py_ssize_t used = 2;
    PyObject *result = NULL;

    Py_ssize_t end = next_crlf(s, start, n);
    if (end < 0)
        Py_RETURN_NONE;
    Py_ssize_t line = end + 2;
    found[1] = line;
    for (;;) {
        end = next_crlf(s, line, n);
        if (end < 0) {
            result = Py_None;
            Py_INCREF(result);
            goto done;
        }
        if (end == line)
            break; /* the blank line */
        Py_ssize_t name_len = 0;
        long kind = kind_of(table, s + line, end - line, &name_len);
        if (kind >= 0) {
            Py_ssize_t vs = line + name_len + 1;
            Py_ssize_t ve = end;
            while (vs < ve && (s[vs] == ' ' || s[vs] == '\t'))
                vs++;
            while (ve > vs && (s[ve - 1] == ' ' || s[ve - 1] == '\t'))
                ve--;
            if (used + FIELDS > cap) {
                Py_ssize_t grown = cap * 4;
                Py_ssize_t *bigger = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)grown);
                if (bigger == NULL) {
                    PyErr_NoMemory();
                    goto done;
                }
                memcpy(bigger, found, sizeof(Py_ssize_t) * (size_t)used);
                if (found != stack)
                    PyMem_Free(found);
                found = bigger;
                cap = grown;
            }
            found[used] = kind;
            found[used + 1] = line;
            found[used + 2] = vs;
            found[used + 3] = ve;
            found[used + 4] = end + 2;
            used += FIELDS;
        }
        line = end + 2;
    }
    found[0] = line;
    result = PyTuple_New(used);
    if (result == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < used; i++) {
        PyObject *number = PyLong_FromSsize_t(found[i]);
        if (number == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyTuple_SET_ITEM(result, i, number);
    }
done:
    if (found != stack)
        PyMem_Free(found);
    return result;
}

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(((name, kind), ...), slot=0): the names index_head(..., slot) reports."},
    {"index_head", (PyCFunction)(void (*)(void))index_head, METH_FASTCALL,
     "index_head(source, start, slot=0): the head's blank line, first header line and configured lines, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "fulcrum.proxy._headscan", "Head lines found in one pass.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__headscan(void)
{
    return PyModule_Create(&module);
}
