# House warning set (NOVA-style strictness, tuned for g++ 12).
function(iovirt_warnings target)
  target_compile_options(${target} PRIVATE
    -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wold-style-cast -Wcast-align
    -Woverloaded-virtual -Wnull-dereference -Wimplicit-fallthrough -Wformat=2
    -Wmissing-declarations -Wsuggest-override)
  if(IOVIRT_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()
