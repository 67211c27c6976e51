# ctest: the CLI on a missing image exits 2 with one stderr line naming the file
# (engine.verify's contract: exit 1 must only ever mean "not the same person").
execute_process(COMMAND "${CLI}" /nonexistent/a.jpg /nonexistent/b.jpg
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
string(REPLACE ";" "," flat "${err}")  # a ';' would split the CMake list below
string(REGEX MATCHALL "error:[^\n]*" errors "${flat}")
list(LENGTH errors count)
if(NOT rc EQUAL 2 OR NOT count EQUAL 1 OR NOT err MATCHES "/nonexistent/a.jpg: no such file")
  message(FATAL_ERROR "expected exit 2 and one error line naming /nonexistent/a.jpg; got rc=${rc}\nstderr: ${err}")
endif()
