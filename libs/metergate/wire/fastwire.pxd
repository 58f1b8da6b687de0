# C types for fastwire.py when Cython compiles it (setup.py). The .py file stays the one source:
# this file only declares the reader as a C class, its methods as C calls, and the integers of the
# varint and decimal loops as C integers. Keep the declarations in step with the .py file: the
# build fails on a declaration that names nothing there.
cimport cython


cdef class _Reader:
    cdef bytes data
    cdef Py_ssize_t pos
    cdef Py_ssize_t size

    cdef int byte(self) except -1

    @cython.locals(data=bytes, pos=Py_ssize_t, byte=cython.uchar, shift=int,
                   value=cython.ulonglong, part=cython.ulonglong)
    cdef long long varint(self) except? -1

    @cython.locals(end=Py_ssize_t)
    cdef Py_ssize_t _end_of(self, long long size) except -1

    @cython.locals(start=Py_ssize_t, end=Py_ssize_t)
    cdef str text(self)

    cdef str identifier(self)
    cdef void skip_text(self) except *
    cdef bint present(self) except -1
    cdef object optional_text(self)
    cdef object optional_int(self)

    @cython.locals(data=bytes, start=Py_ssize_t, end=Py_ssize_t, pos=Py_ssize_t,
                   byte=cython.uchar, value=cython.longlong)
    cdef object unscaled(self, long long size)

    @cython.locals(size=int)
    cdef object decimal(self)

    cdef bint done(self)


@cython.locals(reader=_Reader)
cpdef object _head(bytes raw)

@cython.locals(reader=_Reader)
cpdef object _read(bytes data)

@cython.locals(reader=_Reader)
cpdef object _event_by_hand(bytes data)

@cython.locals(count=cython.longlong)
cdef tuple _segments(_Reader reader)

@cython.locals(zigzag=cython.ulonglong)
cdef void _put_long(bytearray out, long long value) except *

cdef void _put_string(bytearray out, str value) except *
cdef void _put_optional_string(bytearray out, object text) except *
cdef void _put_optional_int(bytearray out, object value) except *
cdef void _put_decimal(bytearray out, object value) except *
